"""The README's Python quickstart runs as written (Hub ids swapped for local copies: no network here)."""

import re
from pathlib import Path

from conftest import tiny_segformer, write_parquet_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


def test_two_setup_commands_and_quickstart_runs(tmp_path, monkeypatch):
    text = README.read_text()
    setup = re.search(r"## Set-up: two commands\n\n```bash\n(.*?)```", text, re.S).group(1)
    assert [line.split("#")[0].strip() for line in setup.strip().splitlines()] == ["make demo", "make test"]

    code = re.search(r"## Quickstart \(Hub users\).*?```python\n(.*?)```", text, re.S).group(1)
    data = write_parquet_dataset(tmp_path / "data", n_train=8, n_val=4)
    base = tmp_path / "mit-b0"
    tiny_segformer().save_pretrained(base)
    for hub, local in (('"merve/scene_parse_150"', repr(str(data))), ('label_set="ade20k"', "label_set=None"),
                       ('"nvidia/mit-b0"', repr(str(base))),
                       ("max_steps=160_000", "max_steps=2"), ("bf16=True", "use_cpu=True, report_to=[]"),
                       ("crop_size=512", "crop_size=32")):
        assert hub in code, hub
        code = code.replace(hub, local)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README quickstart", "exec"), scope)
    assert scope["trainer"].state.global_step == 2
    assert (tmp_path / "student" / "model.safetensors").is_file()
    assert scope["teacher"].config.label_assisted and scope["student"].config.num_channels == 3
    # the Python path writes the training record and lad_hf's card too: a distilled student, not a "baseline"
    from lad_hf.export import export_model

    export_model(str(tmp_path / "student"), str(tmp_path / "export"))
    card = (tmp_path / "export" / "README.md").read_text()
    assert "## How it was distilled" in card and "| μ (distill_weight) | 3 |" in card and "baseline" not in card
