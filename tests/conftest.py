import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    torch.set_num_threads(int(os.environ.get("LORAKIT_THREADS", "1")))


@pytest.fixture(scope="session")
def ci_adapters():
    """Two tiny real adapters (ci profile, few steps), shared by the slow tests."""
    from lorakit.train import train_adapter

    tasks = ["rt_subjectivity", "election_tweets"]
    return {t: train_adapter(t, "ci", progress=False) for t in tasks}
