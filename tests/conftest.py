import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    """A tiny random ToyFlowPipeline saved with save_pretrained (the official diffusers layout)."""
    from rewardflow.toy.pipeline import ToyFlowPipeline

    d = tmp_path_factory.mktemp("toy_pipe")
    ToyFlowPipeline.from_config_dict(width=32, channels=(16, 32, 32), seed=0).save_pretrained(str(d))
    return d


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory):
    """A tiny random ToyCLIPModel + tokenizer saved in the shipped format."""
    from rewardflow.toy.models import ToyCLIPModel
    from rewardflow.toy.pipeline import MAX_TOKENS, build_tokenizer

    d = tmp_path_factory.mktemp("toy_reward")
    tok = build_tokenizer()
    torch.manual_seed(0)
    ToyCLIPModel(vocab_size=len(tok), channels=(16, 16, 32), max_tokens=MAX_TOKENS).save_pretrained(str(d))
    tok.save_pretrained(str(d))
    return d


@pytest.fixture
def flow_gen(tiny_pipe_dir):
    from rewardflow.toy.generator import ToyGenerator

    return ToyGenerator.from_pretrained(tiny_pipe_dir)


def make_diffusion_gen(tiny_pipe_dir, prediction_type="epsilon", guidance_scale=1.0):
    """The same tiny network driven as a DDIM (epsilon / v_prediction) model."""
    from diffusers import DDIMScheduler

    from rewardflow.toy.generator import ToyGenerator
    from rewardflow.toy.pipeline import ToyFlowPipeline

    pipe = ToyFlowPipeline.from_pretrained(str(tiny_pipe_dir))
    pipe.scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                   prediction_type=prediction_type)
    return ToyGenerator(pipe, guidance_scale=guidance_scale)
