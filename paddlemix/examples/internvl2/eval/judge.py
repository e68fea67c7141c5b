"""The LLM judge of MathVista, MM-Vet and LLaVA-Bench, over any OpenAI-compatible chat endpoint.

The official scorers call OpenAI's GPT models; here the endpoint is the user's choice
(``--judge-url https://api.openai.com/v1``, a vLLM or LMDeploy server, or ``python -m paddlemix.serve``),
with the key read from an environment variable. Only the standard library is used, so no
``openai`` package is needed.

Judgments are appended to ``judgments.<judge model>.jsonl`` in the run folder as they come, so an
interrupted scoring resumes where it stopped and judgments by different judge models never mix.
"""
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

from tqdm import tqdm

from .datafiles import drop_torn_tail, read_keyed

logger = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "OPENAI_API_KEY"


class JudgeError(OSError):
    """The judge endpoint cannot be used (unreachable, refused, or answered nonsense); one sentence says why."""


class PromptTooLong(JudgeError):
    """The endpoint refused the prompt for its length; the official MathVista extractor then trims it."""


def chat_completions_url(url: str) -> str:
    """``.../v1`` or a full ``.../chat/completions`` address, as users copy them from their provider."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


@dataclass
class Judge:
    """One judge model behind one endpoint; ``ask`` retries what a retry can fix and raises on the rest."""

    url: str
    model: str
    api_key: Optional[str] = None
    retries: int = 5
    timeout: float = 300.0
    backoff: float = 1.0  # seconds before the first retry, doubled after each
    key_env: str = DEFAULT_KEY_ENV  # named when the endpoint refuses the key

    def ask(self, messages: List[Dict], temperature: float = 0.0, max_tokens: int = 256) -> str:
        """The judge's reply text to a chat request ('' when it sends no content)."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": temperature,
                           "max_tokens": max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        address = chat_completions_url(self.url)
        last_error = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(address, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                return reply["choices"][0]["message"].get("content") or ""
            except urllib.error.HTTPError as error:
                detail = _error_message(error)
                if error.code == 400 and re.search(r"length|too long|context", detail, re.IGNORECASE):
                    raise PromptTooLong(f"the judge refused the prompt as too long: {detail}") from error
                if error.code != 429 and error.code < 500:
                    raise JudgeError(f"the judge at {address} refused the request (HTTP {error.code}: "
                                     f"{detail}); check --judge-model and the key in ${self.key_env}") from error
                last_error = f"HTTP {error.code}: {detail}"
            except (urllib.error.URLError, OSError) as error:  # refused, reset, timed out
                last_error = str(getattr(error, "reason", error))
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
                last_error = f"a reply that is not a chat completion ({error!r})"
            logger.info("judge request %d/%d failed: %s", attempt + 1, self.retries + 1, last_error)
        raise JudgeError(f"the judge at {address} gave no answer after {self.retries + 1} tries "
                         f"(last: {last_error})")


def _error_message(error: urllib.error.HTTPError) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the first 200 characters of the body."""
    try:
        text = error.read().decode("utf-8", "replace")
    except OSError:
        return error.reason or ""
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text[:200].strip() or str(error.reason)


def judge_from_args(url: Optional[str], model: Optional[str], key_env: str, default_model: str,
                    retries: int = 5) -> Optional[Judge]:
    """The configured judge, or None when no ``--judge-url`` was given."""
    if not url:
        return None
    return Judge(url, model or default_model, os.environ.get(key_env) or None, retries=retries, key_env=key_env)


def judgments_path(run_dir: str, model: str) -> str:
    return os.path.join(run_dir, "judgments." + re.sub(r"[^A-Za-z0-9._-]+", "_", model) + ".jsonl")


def judge_all(records: Sequence[Dict], run_dir: str, judge: Judge,
              judge_one: Callable[[Dict, Judge], Dict], desc: str) -> Dict[str, Dict]:
    """Every record's judgment by key: saved ones are reused, missing ones asked for and appended."""
    path = judgments_path(run_dir, judge.model)
    done = read_keyed([path], "judgment") if os.path.exists(path) else {}
    todo = [record for record in records if record["key"] not in done]
    if todo:
        logger.info("judging %d answers with %s at %s (%d judged before)", len(todo), judge.model, judge.url,
                    len(records) - len(todo))
        drop_torn_tail(path)
        with open(path, "a", encoding="utf-8") as log, \
                tqdm(total=len(records), initial=len(records) - len(todo), desc=desc, unit="q") as bar:
            for record in todo:
                done[record["key"]] = judgment = judge_one(record, judge)
                log.write(json.dumps({"key": record["key"], "judgment": judgment}, ensure_ascii=False) + "\n")
                log.flush()
                bar.update()
    return {record["key"]: done[record["key"]] for record in records}
