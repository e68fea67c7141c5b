"""Grounding: boxes parsed from answers, drawn for users, and scored like the official RefCOCO script."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from paddlemix.examples.internvl2.eval import evaluate
from paddlemix.examples.internvl2.eval.tasks import build_task
from paddlemix.examples.internvl2.eval.tasks.refcoco import PROMPT, SPLITS
from paddlemix.models.internvl2 import InternVLChatModel, draw_boxes, parse_boxes
from paddlemix.models.internvl2.grounding import box_iou, official_first_box
from reference import REPO_ROOT

SIZE = (1000, 500)  # width, height: x scales by 1, y by 0.5 from the 0-1000 grid

PARSED = [
    ("<ref>the man</ref><box>[[100, 200, 300, 400]]</box>", [("the man", [100, 100, 300, 200])]),
    ("<ref>cats</ref><box>[[0, 0, 500, 1000], [500, 0, 1000, 1000]]</box>",
     [("cats", [0, 0, 500, 500]), ("cats", [500, 0, 1000, 500])]),
    ("<ref>a</ref><box>[[1,2,3,4]]</box> and <ref>b</ref><box>[[10, 20, 30, 40]]</box>",
     [("a", [1, 1, 3, 2]), ("b", [10, 10, 30, 20])]),
    ("<box>[[100, 100, 200, 200]]</box>", [(None, [100, 50, 200, 100])]),
    ("There it is: <ref> the dog </ref><box>[[0,0,1000,1000]]</box>.", [("the dog", [0, 0, 1000, 500])]),
    ("<ref>x</ref><box>[[0.1, 0.2, 0.5, 0.6]]</box>", [("x", [100, 100, 500, 300])]),  # sums under 4: 0-1
    ("<ref>x</ref><box>[[100.5, 200, 300, 400]]</box>", [("x", [100.5, 100, 300, 200])]),
    ("<ref>x</ref><box>[[ 100 ,200,  300 , 400 ]]</box>", [("x", [100, 100, 300, 200])]),
    ("<ref>x</ref><box>[[100, 200, 300]]</box>", []),  # three numbers
    ("<ref>x</ref><box>[[a, b, c, d]]</box>", []),
    ("<ref>x</ref><box>[[100, 200, 300, 400]]", []),  # no </box>
    ("<ref>x</ref>[[100, 200, 300, 400]]", []),  # a box outside <box> is not a grounding box
    ("<ref>x</ref><box>[[100, 200, 300, 400], [bad], [1, 2, 3, 4]]</box>",
     [("x", [100, 100, 300, 200]), ("x", [1, 1, 3, 2])]),
    ("", []),
    ("no boxes at all", []),
    ("<ref>unclosed<box>[[1, 2, 3, 4]]</box>", [(None, [1, 1, 3, 2])]),
    ("<ref>a</ref><ref>b</ref><box>[[100, 100, 200, 200]]</box>", [("b", [100, 50, 200, 100])]),
    ("<ref>a</ref><box>[[100, 100, 200, 200]]</box><box>[[300, 300, 400, 400]]</box>",
     [("a", [100, 50, 200, 100]), (None, [300, 150, 400, 200])]),
    ("<ref>neg</ref><box>[[-10, 0, 100, 100]]</box>", [("neg", [-10, 0, 100, 50])]),
    ("<ref>big</ref><box>[[0, 0, 1200, 1000]]</box>", [("big", [0, 0, 1200, 500])]),
    ("<ref>多</ref><box>[[0, 0, 1000, 1000]]</box>", [("多", [0, 0, 1000, 500])]),
    ("<ref>x</ref><box>[100, 200, 300, 400]</box>", [("x", [100, 100, 300, 200])]),  # single brackets
    (None, []),
]


@pytest.mark.parametrize("text,expected", PARSED)
def test_parse_boxes(text, expected):
    got = parse_boxes(text, SIZE)
    assert [phrase for phrase, _ in got] == [phrase for phrase, _ in expected]
    for (_, box), (_, want) in zip(got, expected):
        np.testing.assert_allclose(box, want)


def test_the_official_first_box_rule():
    assert official_first_box("<ref>a</ref><box>[[100, 200, 300, 400]]</box>", SIZE) == [100, 100, 300, 200]
    assert official_first_box("[[0.1, 0.2, 0.3, 0.4]]", SIZE) == pytest.approx([100, 100, 300, 200])  # 0-1 grid
    assert official_first_box("[[1, 1, 1, 1]]", SIZE) == [1, 0.5, 1, 0.5]  # sum exactly 4: the 0-1000 grid
    assert official_first_box("nothing", SIZE) == [0, 0, 0, 0]
    assert official_first_box("[[a, b, c, d]]", SIZE) == [0, 0, 0, 0]
    assert official_first_box("[[1, 2, 3, 4]] then [[5, 6, 7, 8]]", SIZE) == [1, 1, 3, 2]  # the first only


def test_iou_and_the_half_threshold():
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 5]) == 0.5  # exactly 0.5 counts as correct
    assert box_iou([0, 0, 0, 0], [0, 0, 10, 10]) == 0.0
    records = [{"response": "[[0, 0, 1000, 1000]]", "bbox": [0, 0, 1000, 250], "width": 1000, "height": 500},
               {"response": "[[0, 0, 1000, 1000]]", "bbox": [0, 0, 1000, 240], "width": 1000, "height": 500},
               {"response": "no box", "bbox": [0, 0, 10, 10], "width": 1000, "height": 500},
               {"response": "[[0.0, 0.0, 0.5, 0.5]]", "bbox": [0, 0, 500, 250], "width": 1000, "height": 500}]
    result = build_task("refcoco-val", "/nonexistent").evaluate(records, "/nonexistent")
    assert result == {"precision_at_1": 0.5, "num_correct": 2}


def test_drawn_boxes_are_where_the_answer_says():
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    drawn = np.asarray(draw_boxes(image, parse_boxes("<box>[[100, 200, 500, 800]]</box>", image.size)))
    x1, y1, x2, y2 = 20, 20, 100, 80
    assert drawn[y1, (x1 + x2) // 2].any() and drawn[y2, (x1 + x2) // 2].any()  # top and bottom edges
    assert drawn[(y1 + y2) // 2, x1].any() and drawn[(y1 + y2) // 2, x2].any()  # left and right edges
    assert not drawn[(y1 + y2) // 2, (x1 + x2) // 2].any() and not drawn[5, 5].any()  # inside, outside
    assert np.asarray(image).max() == 0  # the input is untouched


def _chat_demo():
    spec = importlib.util.spec_from_file_location(
        "chat_demo", REPO_ROOT / "paddlemix" / "examples" / "internvl2" / "chat_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chat_demo_draws_the_answers_boxes(tiny_1b, tmp_path, monkeypatch, capsys):
    answer = "<ref>the red panda</ref><box>[[100, 250, 600, 750]]</box>"
    monkeypatch.setattr(InternVLChatModel, "chat", lambda self, *args, **kwargs: answer)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (400, 200), (0, 0, 0)).save(photo)
    out = tmp_path / "boxes.png"
    _chat_demo().main(["--model_name_or_path", tiny_1b, "--image_path", str(photo), "--max_num", "1",
                       "--draw_boxes", str(out)])
    assert capsys.readouterr().out.splitlines() == [answer, "box: the red panda [40, 50, 240, 150]"]
    drawn = np.asarray(Image.open(out))
    assert drawn[50, 140].any() and drawn[150, 140].any() and not drawn[100, 140].any()
    assert set(os.listdir(tmp_path)) == {"photo.png", "boxes.png"}  # no temporary file left


def test_chat_demo_without_a_box_in_the_answer_is_one_clear_error(tiny_1b, tmp_path, monkeypatch):
    monkeypatch.setattr(InternVLChatModel, "chat", lambda self, *args, **kwargs: "a red panda")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 20)).save(photo)
    demo = _chat_demo()
    with pytest.raises(ValueError, match=r"^the answer holds no <box>"):
        demo.main(["--model_name_or_path", tiny_1b, "--image_path", str(photo), "--draw_boxes",
                   str(tmp_path / "out.jpg")])
    assert not (tmp_path / "out.jpg").exists()
    with pytest.raises(ValueError, match="unknown image extension '.xyz'"):
        demo.main(["--model_name_or_path", tiny_1b, "--image_path", str(photo), "--draw_boxes", "out.xyz"])
    with pytest.raises(ValueError, match="--draw_boxes needs --image_path"):
        demo.main(["--model_name_or_path", tiny_1b, "--draw_boxes", "out.jpg"])


def test_refcoco_end_to_end_in_the_official_layout(tiny_1b, tmp_path):
    os.makedirs(tmp_path / "data" / "refcoco")
    os.makedirs(tmp_path / "data" / "coco" / "train2014")
    rows = []
    for index in range(3):
        name = f"data/coco/train2014/COCO_train2014_{index:012d}.jpg"
        Image.fromarray(np.random.RandomState(index).randint(0, 255, (60, 80, 3), dtype=np.uint8)).save(
            tmp_path / name)
        rows.append({"image": name, "sent": f"thing {index}", "bbox": [0, 0, 40, 30], "width": 80, "height": 60})
    with open(tmp_path / "data" / "refcoco" / "refcoco+_testA.jsonl", "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    results = evaluate.main([tiny_1b, "refcoco+-testA", "--data-root", str(tmp_path), "--out-dir", str(out),
                             "--max-new-tokens", "4"])
    folder = out / os.path.basename(tiny_1b) / "refcoco+-testA"
    with open(folder / "answers.json", encoding="utf-8") as f:
        records = json.load(f)
    assert [r["question"] for r in records] == [PROMPT.format(f"thing {i}") for i in range(3)]
    hits = sum(box_iou(official_first_box(r["response"], (80, 60)), [0, 0, 40, 30]) >= 0.5 for r in records)
    assert results["metrics"] == {"precision_at_1": hits / 3, "num_correct": hits}


def test_every_refcoco_target_is_known_and_a_missing_file_names_the_layout(tmp_path):
    assert set(SPLITS) == {"refcoco-val", "refcoco-testA", "refcoco-testB", "refcoco+-val", "refcoco+-testA",
                           "refcoco+-testB", "refcocog-val", "refcocog-test"}
    for name in SPLITS:
        assert build_task(name, str(tmp_path)).name == name
    with pytest.raises(Exception, match=r"data/refcoco/\{refcoco_val.jsonl"):
        build_task("refcocog-test", str(tmp_path)).load()


def test_the_refcoco_target_runs_all_eight_splits_and_averages_them(tmp_path):
    os.makedirs(tmp_path / "data" / "refcoco")
    for number, file in enumerate(SPLITS.values()):
        rows = [{"image": "data/coco/x.jpg", "sent": f"{file} {i}", "bbox": [0, 0, 50, 50], "width": 100,
                 "height": 100} for i in range(number + 1)]  # 1 to 8 questions per split
        with open(tmp_path / "data" / "refcoco" / file, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
    task = build_task("refcoco", str(tmp_path))
    items = task.load()
    assert len(items) == 36 and items[0].key == "refcoco-val:0" and items[-1].key == "refcocog-test:7"
    # the first question of each split is answered right, the others wrong: precision 1/n for split n
    records = [{"key": i.key, "response": "[[0, 0, 500, 500]]" if i.key.endswith(":0") else "[[600, 600, 900, 900]]",
                **i.meta} for i in items]
    metrics = task.evaluate(records, str(tmp_path))
    assert metrics["refcocog-test"] == {"precision_at_1": 1 / 8, "num_correct": 1}
    assert metrics["average_precision_at_1"] == pytest.approx(sum(1 / n for n in range(1, 9)) / 8)
