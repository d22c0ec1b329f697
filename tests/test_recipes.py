"""The shipped recipes (configs/<family>/*.yaml, not the toy ones): each cites its source and says what it needs,
validates with --print-config, and runs as a --smoke dry run on tiny random models of its family (2 steps on the
CPU) whose saved weights load into a plain diffusers pipeline and change its output. Three families run in the
default suite; the rest are marked slow."""

import json
from pathlib import Path

import pytest

from rewardflow.cli import main
from rewardflow.config import read_config_dict

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "configs").glob("*/*.yaml") if p.parent.name not in ("toy", "accelerate"))
TRAIN = [p for p in RECIPES if read_config_dict(p).get("command", "train") == "train"]
NOISE_OPT = [p for p in RECIPES if read_config_dict(p).get("command") == "noise-opt"]
# fast enough for the default suite (tiny models, tiny rewards): SD 1.x (LoRA and full fine-tuning), SD3, Wan
DEFAULT_SMOKE = {"sd15/ddpo_compressibility.yaml", "sd15/diffusion_dpo_pickapic.yaml", "sd3/flow_dpo_pickscore.yaml",
                 "wan/flow_dpo_videoreward.yaml"}


def _rel(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def test_at_least_eight_training_recipes_over_the_families():
    assert len(TRAIN) >= 8 and len(NOISE_OPT) >= 1
    assert {p.parent.name for p in RECIPES} >= {"sd15", "sd3", "flux", "wan", "one_step"}
    methods = {read_config_dict(p)["method"] for p in TRAIN}
    assert methods >= {"diffusion_dpo", "ddpo", "draft", "grpo", "flow_dpo"}


@pytest.mark.parametrize("recipe", RECIPES, ids=_rel)
def test_recipe_header_cites_its_source_and_needs(recipe):
    head = "".join(ln for ln in recipe.read_text().splitlines(keepends=True) if ln.startswith("#"))
    assert "Source" in head and "github.com/" in head and "@" in head, "cite repo @ commit and file"
    assert "Needs:" in head, "say what it needs (GPUs, memory, expected time)"
    assert "--smoke" in head, "give the dry-run command"
    data = read_config_dict(recipe)
    if data.get("command", "train") == "train":
        assert data.get("prompts") and "eval_prompts" in data and data.get("reward"), "a non-toy run names them"


@pytest.mark.parametrize("recipe", TRAIN, ids=_rel)
def test_print_config_passes(recipe, capsys):
    assert main(["train", str(recipe), "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["method"] == read_config_dict(recipe)["method"] and cfg["model"]


def test_shipped_prompt_files_exist_and_name_their_source():
    for p in TRAIN + NOISE_OPT:
        data = read_config_dict(p)
        for key in ("prompts", "eval_prompts"):
            v = data.get(key)
            if v and v.startswith("assets/"):
                f = ROOT / v
                assert f.is_file(), (p, key, v)
                head = f.read_text().splitlines()[:4]
                assert any("Source:" in ln for ln in head) and any("Licen" in ln for ln in head), f


def test_a_noise_opt_recipe_is_refused_by_train_with_the_command_to_run(capsys):
    r = NOISE_OPT[0]
    assert main(["train", str(r), "--print-config"]) == 2
    assert f"run `rewardflow noise-opt --config {r}`" in capsys.readouterr().err


def _smoke(recipe: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--smoke", f"output_dir={out}"]) == 0
    text = capsys.readouterr().out
    assert "[smoke] the real run:" in text and f"model {read_config_dict(recipe)['model']}" in text
    assert list((out / "final").glob("*.safetensors")), "final/*.safetensors"
    assert "loaded into a plain diffusers pipeline, its output changes by up to" in text
    return out, text


@pytest.mark.parametrize("recipe", [pytest.param(p, marks=[] if _rel(p) in DEFAULT_SMOKE else pytest.mark.slow)
                                    for p in TRAIN], ids=_rel)
def test_smoke_runs_the_recipe_on_tiny_models(recipe, tmp_path, capsys):
    out, text = _smoke(recipe, tmp_path, capsys)
    data = read_config_dict(recipe)
    if data.get("lora_rank", 8) > 0:
        # every checkpoint also holds the LoRA as diffusers reads it
        for ck in (out / "checkpoints").glob("step_*"):
            assert (ck / "pytorch_lora_weights.safetensors").is_file() and (ck / "trainable.safetensors").is_file()
    else:
        assert list((out / "final").glob("*/config.json")), "full fine-tuning: the denoiser's save_pretrained folder"


def test_smoke_reports_what_the_real_run_needs(tmp_path, capsys):
    """The Wan recipe: real sizes and reward files in the summary, the capped ones in the dry run."""
    _, text = _smoke(ROOT / "configs" / "wan" / "flow_dpo_videoreward.yaml", tmp_path, capsys)
    assert "dtype bf16" in text and "240x416, 33 frames" in text and "LoRA r=32" in text
    assert "reward videoreward: path=checkpoints/VideoReward (not on this machine: supply it)" in text
    assert "num_frames 33 -> 9" in text and "num_samples_per_prompt 8 -> 2" in text


def test_noise_opt_recipe_smoke(tmp_path, capsys):
    r = NOISE_OPT[0]
    out = tmp_path / "reno"
    assert main(["noise-opt", "--config", str(r), "--smoke", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["method"] == "reno" and s["reward"] == "hpsv2.1:5,imagereward:1,pickscore:0.05,clip:0.01"
    assert "reward clip: path=laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in capsys.readouterr().out


def test_the_family_of_a_hub_id_that_is_not_on_this_machine():
    from rewardflow.testing.smoke import family_adapter

    want = {"runwayml/stable-diffusion-v1-5": "sd", "CompVis/stable-diffusion-v1-4": "sd",
            "stabilityai/sd-turbo": "sd-turbo", "stabilityai/sdxl-turbo": "sdxl-turbo",
            "stabilityai/stable-diffusion-xl-base-1.0": "sdxl", "stabilityai/stable-diffusion-3.5-medium": "sd3",
            "stabilityai/stable-diffusion-3.5-large-turbo": "sd3-turbo", "black-forest-labs/FLUX.1-dev": "flux",
            "black-forest-labs/FLUX.1-schnell": "flux-schnell", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "wan",
            "THUDM/CogVideoX-2b": "cogvideox", "Lightricks/LTX-Video": "ltx"}
    assert {m: family_adapter(m, None) for m in want} == want
    assert family_adapter("some/model", "sdxl") == "sdxl"  # `adapter:` wins
    with pytest.raises(ValueError, match="set `adapter:` in the recipe"):
        family_adapter("someone/my-model", None)
