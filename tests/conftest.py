import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_random_folders(tmp_path_factory):
    """Random tiny SD and LCM pipelines saved in their real diffusers layouts."""
    from alignzoo.models.tiny_random import build_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny_random")
    return {"sd": build_tiny_pipeline(root / "sd", "sd"), "lcm": build_tiny_pipeline(root / "lcm", "lcm")}


@pytest.fixture()
def tiny_random_sd(tiny_random_folders):
    from alignzoo.models import load_model

    return load_model(str(tiny_random_folders["sd"]))


@pytest.fixture()
def tiny_random_lcm(tiny_random_folders):
    from alignzoo.models import load_model

    return load_model(str(tiny_random_folders["lcm"]))


# four prompts for the tiny random models: training and CLI tests
@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("a red cat\na blue dog\na green circle\na red square\n")
    return p


@pytest.fixture()
def tiny_run(tiny_random_folders, prompt_file):
    """``tiny_run(algo, kind, out, samples)``: a TrainConfig for a short run on a tiny random
    pipeline ("sd" or "lcm"), jpeg reward, the four prompts, no log-only reward queries."""
    from alignzoo.algos.trainer import TrainConfig

    def make(algo: str, kind: str, out, samples: int) -> TrainConfig:
        return TrainConfig(
            algo=algo,
            reward="jpeg_compressibility",
            model=str(tiny_random_folders[kind]),
            prompts=str(prompt_file),
            out=str(out),
            samples=samples,
            progress=False,
            log_first_step_reward=False,
        )

    return make
