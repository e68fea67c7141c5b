"""Video input: the model card's frame choice, decord vs OpenCV, user errors, and video chat.

decord and OpenCV both decode with FFmpeg; the frames they return are compared
with a tolerance of one 8-bit level (MAX_LEVEL_DIFF). MPEG-4 decoding is
bit-exact by specification, but each wheel bundles its own FFmpeg build, whose
YUV->RGB conversion may take different SIMD paths that can round differently by
one level. On this machine they are identical (difference 0).
"""
import numpy as np
import pytest

from paddlemix.models.internvl2 import InternVLChatModel, VideoLoadError, load_tokenizer, load_video
from paddlemix.models.internvl2.processing import IMAGENET_STD, _pick_backend, get_index, read_video_frames
from reference import REPO_ROOT, load_tool, require_asset
from test_chat import PromptRecorder, image_tokens

cv2 = pytest.importorskip("cv2")
pytest.importorskip("decord")

DEMO_CLIP = str(REPO_ROOT / "paddlemix" / "demo_images" / "demo_clip.mp4")
MAX_LEVEL_DIFF = 1
# One 8-bit level after ToTensor/Normalize, for the channel with the smallest std.
PIXEL_TOL = MAX_LEVEL_DIFF / 255 / min(IMAGENET_STD) + 1e-6


def model_card_index(bound, fps, max_frame, num_segments, first_idx=0):
    """The model card's get_index, restated term by term."""
    start, end = (bound[0], bound[1]) if bound else (-100000, 100000)
    first = max(first_idx, round(start * fps))
    last = min(round(end * fps), max_frame)
    size = float(last - first) / num_segments
    return [int(first + (size / 2) + np.round(size * i)) for i in range(num_segments)]


@pytest.mark.parametrize("fps", [10.0, 25.0, 29.97, 7.5])
@pytest.mark.parametrize("num_frames", [1, 7, 40, 301])
@pytest.mark.parametrize("bound", [None, (0.5, 2.5), (0.04, 0.06), (1.0, 100.0), (-5.0, 1.0)])
@pytest.mark.parametrize("num_segments", [1, 8, 32])
def test_frame_indices_follow_the_model_card(fps, num_frames, bound, num_segments):
    ours = get_index(bound, fps, num_frames - 1, num_segments=num_segments)
    expected = model_card_index(bound, fps, num_frames - 1, num_segments)
    assert ours.tolist() == expected


def test_frame_indices_by_hand():
    # 40 frames at 10 fps: segment midpoints over [0, 39], then over [10, 20] for 1-2 s.
    assert get_index(None, 10.0, 39, num_segments=8).tolist() == [2, 7, 12, 17, 22, 26, 31, 36]
    assert get_index((1, 2), 10.0, 39, num_segments=8).tolist() == [10, 11, 12, 14, 15, 16, 18, 19]
    # More segments than frames: frames repeat, as in the official code (np.round: 2.5 -> 2).
    assert get_index(None, 10.0, 4, num_segments=8).tolist() == [0, 0, 1, 2, 2, 2, 3, 4]


def write_video(path, num_frames, fps, size=(96, 64)):
    """An mp4 of noise whose frame i shows i in binary as six black/white 16x16 squares along the top."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    rng = np.random.RandomState(0)
    for index in range(num_frames):
        frame = rng.randint(0, 256, size=(height, width, 3), dtype=np.uint8)
        for bit in range(6):
            frame[:16, bit * 16:(bit + 1) * 16] = 255 if index >> bit & 1 else 0
        writer.write(frame)
    writer.release()
    return str(path)


def frame_numbers(frames):
    """The index each frame shows (see write_video)."""
    return [sum(1 << bit for bit in range(6) if frame[4:12, bit * 16 + 4:bit * 16 + 12].mean() > 128)
            for frame in frames]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "counting.mp4", num_frames=37, fps=7.5)


@pytest.mark.parametrize("bound, num_segments", [(None, 8), (None, 50), ((1.0, 3.0), 6), ((4.5, 99.0), 4)])
def test_decord_and_opencv_read_the_model_card_frames(clip, bound, num_segments):
    expected = get_index(bound, 7.5, 36, num_segments=num_segments).tolist()
    decord_frames = read_video_frames(clip, bound, num_segments, backend="decord")
    opencv_frames = read_video_frames(clip, bound, num_segments, backend="opencv")
    assert frame_numbers(decord_frames) == expected
    assert frame_numbers(opencv_frames) == expected
    for ours, theirs in zip(decord_frames, opencv_frames):
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= MAX_LEVEL_DIFF


def test_load_video_gives_the_same_pixels_with_either_reader():
    by_decord, patches_decord = load_video(DEMO_CLIP, num_segments=8, max_num=2, backend="decord")
    by_opencv, patches_opencv = load_video(DEMO_CLIP, num_segments=8, max_num=2, backend="opencv")
    # 320x240 is 4:3, which with at most 2 tiles is one tile: no thumbnail.
    assert patches_decord == patches_opencv == [1] * 8
    assert by_decord.shape == [8, 3, 448, 448]
    np.testing.assert_allclose(by_decord.numpy(), by_opencv.numpy(), rtol=0, atol=PIXEL_TOL)


def test_bound_and_tiles_per_frame(clip):
    pixel_values, num_patches_list = load_video(clip, bound=(1.0, 3.0), num_segments=3, max_num=6, input_size=64)
    # 96x64 is 3:2: a 3x2 grid plus a thumbnail per frame.
    assert num_patches_list == [7, 7, 7]
    assert pixel_values.shape == [21, 3, 64, 64]


def test_more_segments_than_frames_repeat_frames(tmp_path):
    short = write_video(tmp_path / "short.mp4", num_frames=5, fps=10)
    pixel_values, num_patches_list = load_video(short, num_segments=8, input_size=32)
    assert num_patches_list == [1] * 8
    frames = pixel_values.numpy()
    np.testing.assert_array_equal(frames[0], frames[1])  # frame 0 twice, as the model card picks it
    assert frame_numbers(read_video_frames(short, num_segments=8)) == [0, 0, 1, 2, 2, 2, 3, 4]


def test_opencv_is_used_without_decord(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "decord", None)
    assert _pick_backend(None) == "opencv"


@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_unreadable_videos_are_explained(tmp_path, backend):
    missing = tmp_path / "nope.mp4"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 20)
    cases = [(missing, "file not found"), (tmp_path, "is a directory"), (empty, "the file is empty"),
             (corrupt, "not a readable video file")]
    for path, reason in cases:
        with pytest.raises(VideoLoadError, match=reason) as error:
            load_video(path, num_segments=2, backend=backend)
        assert f"cannot read video '{path}'" in str(error.value)


@pytest.mark.parametrize("bound, reason", [
    ((5.0, 6.0), r"bound \(5, 6\) s is outside the video \(0 to 4.00 s\)"),
    ((-3.0, -1.0), r"bound \(-3, -1\) s is outside the video"),
    ((2.0, 1.0), r"bound \(2, 1\) s ends before it starts"),
])
def test_bound_outside_the_video_is_an_error(bound, reason):
    with pytest.raises(VideoLoadError, match=reason):
        load_video(DEMO_CLIP, bound=bound, num_segments=4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_segments must be a positive integer"):
        load_video(DEMO_CLIP, num_segments=0)
    with pytest.raises(ValueError, match="max_num must be at least 1"):
        load_video(DEMO_CLIP, max_num=0)
    with pytest.raises(ValueError, match="unknown video backend 'av'"):
        load_video(DEMO_CLIP, backend="av")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = require_asset("tokenizers", "internvl2-1b")
    out = tmp_path_factory.mktemp("tiny-video")
    load_tool("make_tiny_checkpoint").make_tiny_checkpoint(str(folder / "config.json"), str(folder), str(out), seed=3)
    return str(out)


def test_video_multi_round_chat_uses_one_image_per_frame(tiny, monkeypatch):
    model, tokenizer = InternVLChatModel.from_pretrained(tiny), load_tokenizer(tiny)
    pixel_values, num_patches_list = load_video(DEMO_CLIP, num_segments=4, max_num=1)
    prefix = "".join(f"Frame{i + 1}: <image>\n" for i in range(len(num_patches_list)))
    config = dict(max_new_tokens=4, do_sample=False)
    response, history = model.chat(tokenizer, pixel_values, prefix + "What happens?", config,
                                   num_patches_list=num_patches_list, history=None, return_history=True)
    response2, history = model.chat(tokenizer, pixel_values, "Describe this video in detail.", config,
                                    num_patches_list=num_patches_list, history=history, return_history=True)
    assert history == [(prefix + "What happens?", response), ("Describe this video in detail.", response2)]

    recorder = PromptRecorder(model)
    monkeypatch.setattr(model, "generate", recorder)
    model.chat(tokenizer, pixel_values, "Describe this video in detail.", config,
               num_patches_list=num_patches_list, history=history[:1])
    frames = "".join(f"Frame{i + 1}: {image_tokens(1)}\n" for i in range(4))
    prompt = tokenizer.decode(recorder.prompts[0][0])
    assert f"<|im_start|>user\n{frames}What happens?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>user\nDescribe this video in detail.<|im_end|><|im_start|>assistant\n")
