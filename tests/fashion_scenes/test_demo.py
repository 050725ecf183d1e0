"""lad_hf.fashion_scenes.demo --tiny: the whole demo in-process, in seconds."""

import json
import time



def test_demo_tiny(tmp_path):
    from lad_hf.fashion_scenes import demo  # Fashion-MNIST: the committed test subset (conftest)

    start = time.perf_counter()
    out = tmp_path / "demo"
    assert demo.main(["--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--tiny", "--threads", "1"]) == 0
    assert time.perf_counter() - start < 60
    for name in ("results.md", "results.json", "figure.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in res["rows"]]
    assert len(names) == 4
    assert names[:3] == ["baseline student", "LAD teacher (noised label input)", "LAD student"]
    assert names[3].startswith("CWD student")
    for r in res["rows"]:
        assert 0.0 <= r["test_miou"] <= 1.0 and 0.0 <= r["val_miou"] <= 1.0
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| baseline student |" in (out / "results.md").read_text()
