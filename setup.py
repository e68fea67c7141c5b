"""Packaging for the PaddlePaddle port of InternVL2."""
from setuptools import find_packages, setup

setup(
    name="paddlemix-internvl2",
    version="0.1.0",
    description="InternVL2 multimodal chat models in PaddlePaddle, loading the original checkpoints",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["paddlemix", "paddlemix.*"]),
    package_data={"paddlemix": ["demo_images/*", "examples/internvl2/*.md", "examples/internvl2/eval/*.sh",
                                "examples/internvl2/eval/*.md", "serve/static/*", "models/internvl2/csrc/*.cc",
                                "examples/internvl2/shell/internvl2.0/2nd_finetune/*.sh", "tools/*.md"]},
    include_package_data=True,
    install_requires=[
        # paddlepaddle itself is not listed: CPU, GPU and NPU users install
        # different builds (paddlepaddle, paddlepaddle-gpu, paddle-custom-npu).
        "paddleformers>=1.2",
        "safetensors>=0.4",
        "huggingface_hub>=0.23",
        "sentencepiece>=0.1.99",
        "pillow>=9",
        "numpy>=1.23,<2",
        "opencv-python-headless>=4.8",
        "tqdm>=4.60",
        # fast_dataindex (a paddleformers dependency) pins numpy<=1.26.4;
        # newer pyarrow/datasets need numpy 2.
        "pyarrow<21",
        "datasets<4",
    ],
    extras_require={
        "cpu": ["paddlepaddle>=3.0"],
        "video": ["decord>=0.6; platform_machine=='x86_64'"],
        # MMBench submissions are .xlsx, as the official server expects.
        "eval": ["openpyxl>=3.1", "pandas"],
        # `python -m paddlemix.serve`: the OpenAI-compatible server and chat page.
        "serve": ["fastapi>=0.115", "uvicorn>=0.30"],
        # nbclient + ipykernel execute the quick-start notebook in the tests; openai and playwright
        # (driving Debian's chromium, never a downloaded browser) test the server.
        "test": ["pytest>=7", "paddlepaddle>=3.0", "decord>=0.6; platform_machine=='x86_64'", "openpyxl>=3.1",
                 "pandas", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29",
                 "fastapi>=0.115", "uvicorn>=0.30", "openai>=1.40", "playwright>=1.45"],
    },
)
