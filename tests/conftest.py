import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Deselect (not skip) the Triton cases that only run in the TRITON_INTERPRET=1 subprocess that
    ``test_triton_interpreter_suite`` starts: the interpreter must be on before triton is imported."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    drop = [it for it in items if it.get_closest_marker("triton_interpreter_only")]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if not it.get_closest_marker("triton_interpreter_only")]


def pytest_configure(config):
    # Tests use tiny shapes: on 2 cores, intra-op threading costs more than it gains (and a
    # contended machine makes every tiny op wait on threads). Subprocess tests set their own.
    import torch

    torch.set_num_threads(int(os.environ.get("SAE_RAD_TEST_THREADS", "1")))
