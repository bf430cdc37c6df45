"""Lifecycle tests train tiny models in-process too: use one torch thread (as the CLI subprocesses do), so a shared
2-core machine is not oversubscribed and in-process runs compare bit for bit with each other."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
