"""Several training processes and the CUDA-only decisions that can be checked on the CPU:
torchrun jobs over gloo (one machine, or two "nodes" on loopback with a folder each, as
machines without a shared filesystem), short last batches, the launcher's environment, the
collective timeout, reduced precision and the CUDA requirement of GPU reproductions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imgpipe.data.splits import SplitArrays
from imgpipe.errors import ImgpipeError
from imgpipe.training import distributed, inference
from imgpipe.training.distributed import COLLECTIVE_TIMEOUT, Processes, start_processes
from imgpipe.training.feature_cache import cache_key
from imgpipe.training.inference import autocast_dtype, resolve_device
from imgpipe.training.loop import global_batches, seed_everything, train_classifier
from tests.conftest import REPO_ROOT, free_port, make_split, train_config

WORKER = str(REPO_ROOT / "tests/training/ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def log_dir(folder: Path) -> str:
    """torchrun's bookkeeping in the test's folder (by default it leaves a folder in /tmp)."""
    return f"--log-dir={folder / 'torchrun'}"


def run_two_processes(out: Path, *mode: str) -> subprocess.CompletedProcess[str]:
    command = [*TORCHRUN, "--standalone", "--nproc-per-node=2", log_dir(out), WORKER, str(out)]
    command += mode
    return subprocess.run(
        command, env=ENV, capture_output=True, text=True, timeout=300, check=False
    )


def run_two_nodes(folders: list[Path], *mode: str, timeout: float = 300) -> list[str]:
    """The README's multi-node command with one process per "node", both on this machine (c10d
    rendezvous on loopback, gloo), each node writing to its own folder. Returns each node's
    output; fails the test when a node fails or the job hangs."""
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [
                *TORCHRUN,
                "--nnodes=2",
                f"--node-rank={rank}",
                "--nproc-per-node=1",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint={endpoint}",
                "--rdzv-id=imgpipe-test",
                log_dir(folder),
                WORKER,
                str(folder),
                *mode,
            ],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, folder in enumerate(folders)
    ]
    try:
        outputs = [node.communicate(timeout=timeout)[0] for node in nodes]
    except subprocess.TimeoutExpired:
        for node in nodes:
            node.kill()
        pytest.fail(f"the two-node job hung for {timeout} s")
    codes = [node.returncode for node in nodes]
    assert codes == [0, 0], f"exit codes {codes}\n" + outputs[0][-2500:] + outputs[1][-2500:]
    return outputs


def weights_of(folder: Path, rank: int) -> dict[str, torch.Tensor]:
    return dict(torch.load(folder / f"rank{rank}.pt", weights_only=True))


def assert_same_weights(one: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> None:
    assert one.keys() == other.keys()
    for name, tensor in one.items():
        assert torch.equal(tensor, other[name]), name


def test_two_process_ddp_on_cpu_trains_one_model(tmp_path: Path) -> None:
    finished = run_two_processes(tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    assert reports[0]["history"] == reports[1]["history"]  # losses gathered from both
    assert max(h["val_accuracy"] for h in reports[0]["history"]) >= 0.9
    assert_same_weights(weights_of(tmp_path, 0), weights_of(tmp_path, 1))  # one model
    state = torch.load(tmp_path / "state.pt", weights_only=True)  # written by rank 0 only
    assert state["epoch"] == 4 and len(state["torch_rng"]) == 2
    assert not torch.equal(state["torch_rng"][0], state["torch_rng"][1])  # each its own draws


@pytest.mark.slow
def test_two_process_ddp_resumes_with_every_processes_random_state(tmp_path: Path) -> None:
    """Kill both processes after epoch 2 (as a failed node would), start the job again: the
    model equals an uninterrupted 2-process run's, bit for bit. Each process draws its own
    augmentation, so this holds only when every process gets its own generator state back."""
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    whole.mkdir()
    interrupted.mkdir()
    assert run_two_processes(whole).returncode == 0
    crashed = run_two_processes(interrupted, "crash")
    assert crashed.returncode != 0 and not (interrupted / "rank0.pt").exists()
    assert torch.load(interrupted / "state.pt", weights_only=True)["epoch"] == 2
    resumed = run_two_processes(interrupted)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming after epoch 2" in resumed.stderr
    for rank in (0, 1):
        assert_same_weights(weights_of(whole, rank), weights_of(interrupted, rank))


@pytest.mark.slow
def test_a_last_global_batch_smaller_than_the_processes_is_dropped(tmp_path: Path) -> None:
    """41 images in batches of 8 leave one image for two processes: one would get none and
    divide by zero while the other waits in all-reduce."""
    finished = run_two_processes(tmp_path, "images=41")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert_same_weights(weights_of(tmp_path, 0), weights_of(tmp_path, 1))


def test_global_batches_give_every_process_two_images_or_drop_the_rest() -> None:
    for world in (1, 2, 3, 4):
        for images in range(2 * world, 60):
            batches = global_batches(np.arange(images), 8, Processes(0, world, 0))
            shares = [len(batch[rank::world]) for batch in batches for rank in range(world)]
            assert min(shares) >= 2, (world, images)
            covered = np.concatenate(batches)
            assert np.array_equal(covered, np.arange(len(covered)))  # in order, none twice
            assert images - len(covered) < 2 * world  # only a too-short tail is dropped
    assert [len(b) for b in global_batches(np.arange(4000), 128, Processes())][-1] == 32


def test_a_last_batch_of_one_image_does_not_break_batch_norm() -> None:
    """17 images in batches of 8: the last would hold one image, which batch norm refuses to
    train on ("Expected more than 1 value per channel")."""
    split = make_split(9, seed=1)
    train = SplitArrays(split.images[:17], split.labels[:17], split.classes, split.files[:17])
    result = train_classifier(train, make_split(4, seed=2), train_config(epochs=2))
    assert len(result.history) == 2


@pytest.mark.slow
def test_two_nodes_on_loopback_train_one_model_like_a_single_process(tmp_path: Path) -> None:
    """Both ranks end with the same weights, and the result is close to a single process's
    (the same global batches, other augmentation)."""
    folders = [tmp_path / "node0", tmp_path / "node1"]
    for folder in folders:
        folder.mkdir()
    run_two_nodes(folders)
    reports = [json.loads((f / f"rank{r}.json").read_text()) for r, f in enumerate(folders)]
    assert [r["world"] for r in reports] == [2, 2]
    assert_same_weights(weights_of(folders[0], 0), weights_of(folders[1], 1))
    alone = train_classifier(make_split(24, seed=1), make_split(8, seed=2), train_config())
    two_nodes = max(h["val_accuracy"] for h in reports[0]["history"])
    assert abs(two_nodes - alone.kept["val_accuracy"]) <= 0.1


@pytest.mark.slow
def test_nodes_without_a_shared_filesystem_cache_features_and_resume_each_on_its_own(
    tmp_path: Path,
) -> None:
    """finetune: head with a folder per node: each node's first process fills its own feature
    cache (node 1 found none and failed); killed after epoch 2 and started again, both nodes
    resume from their own copy of the state and end as an uninterrupted job."""
    whole = [tmp_path / "whole0", tmp_path / "whole1"]
    interrupted = [tmp_path / "interrupted0", tmp_path / "interrupted1"]
    for folder in whole + interrupted:
        folder.mkdir()
    run_two_nodes(whole, "head")
    assert all(list((folder / "features").glob("*.npz")) for folder in whole)
    with pytest.raises(AssertionError):
        run_two_nodes(interrupted, "head", "crash")
    assert [torch.load(f / "state.pt", weights_only=True)["epoch"] for f in interrupted] == [2, 2]
    outputs = run_two_nodes(interrupted, "head")
    assert all("resuming after epoch 2" in output for output in outputs)
    for rank in (0, 1):
        assert_same_weights(weights_of(whole[rank], rank), weights_of(interrupted[rank], rank))


@pytest.mark.slow
def test_nodes_that_found_different_states_start_afresh_together(tmp_path: Path) -> None:
    """Node 1 lost its state (a new disk): node 0 alone continuing from epoch 3 while node 1
    starts at epoch 1 would hang both in their first collective."""
    whole = [tmp_path / "whole0", tmp_path / "whole1"]
    interrupted = [tmp_path / "interrupted0", tmp_path / "interrupted1"]
    for folder in whole + interrupted:
        folder.mkdir()
    run_two_nodes(whole)
    with pytest.raises(AssertionError):
        run_two_nodes(interrupted, "crash")
    (interrupted[1] / "state.pt").unlink()
    outputs = run_two_nodes(interrupted, timeout=180)
    assert "starting afresh on all" in outputs[0]
    assert_same_weights(weights_of(whole[0], 0), weights_of(interrupted[0], 0))


def test_a_launcher_without_local_rank_gets_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(ImgpipeError, match="WORLD_SIZE is 2 but LOCAL_RANK is not set"):
        start_processes("cpu")


def fake_cuda(monkeypatch: pytest.MonkeyPatch, gpus: int, bf16: bool = True) -> list[object]:
    """torch believing it has ``gpus`` GPUs; returns the calls made to set the device."""
    calls: list[object] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    return calls


def test_more_processes_than_gpus_are_refused_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, gpus=1)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ImgpipeError, match=r"2 training processes .* torch sees 1"):
        start_processes("cuda")
    with pytest.raises(ImgpipeError, match=r"4 training processes .* at most 1"):
        distributed.relaunch_under_torchrun(4, "auto", "stages/train.py", [])


def test_a_relaunch_runs_the_script_in_each_process_and_leaves_no_folder_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchrun, left to itself, makes a torchelastic_* folder per run in the temporary
    directory and never removes it."""
    scratch, out = tmp_path / "tmp", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys\n"
        "open(os.path.join(sys.argv[1], os.environ['RANK']), 'w').write(os.environ['WORLD_SIZE'])\n"
    )
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    distributed.relaunch_under_torchrun(2, "cpu", str(script), [str(out)])
    assert {f.name: f.read_text() for f in out.iterdir()} == {"0": "2", "1": "2"}
    assert list(scratch.iterdir()) == []


def test_the_process_group_waits_long_and_binds_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """NCCL's default 10-minute timeout would abort a job whose first processes fill a feature
    cache while the others wait at the barrier."""
    joined: list[dict[str, object]] = []

    def join(backend: str, **options: object) -> None:
        joined.append({"backend": backend, **options})

    monkeypatch.setattr(torch.distributed, "init_process_group", join)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    assert start_processes("cpu") == Processes(1, 2, 1)
    set_devices = fake_cuda(monkeypatch, gpus=2)
    start_processes("cuda")
    assert joined[0] == {"backend": "gloo", "timeout": COLLECTIVE_TIMEOUT, "device_id": None}
    assert joined[1] == {
        "backend": "nccl",
        "timeout": COLLECTIVE_TIMEOUT,
        "device_id": torch.device("cuda", 1),
    }
    assert COLLECTIVE_TIMEOUT.total_seconds() >= 3600 and set_devices == [1]


def test_bf16_only_where_the_gpu_has_it_else_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda", 0)
    assert autocast_dtype(torch.device("cpu")) is None
    fake_cuda(monkeypatch, gpus=1, bf16=True)
    assert autocast_dtype(cuda) == torch.bfloat16
    fake_cuda(monkeypatch, gpus=1, bf16=False)  # a T4: bf16 only emulated
    assert autocast_dtype(cuda) == torch.float16


def test_the_feature_cache_is_keyed_by_device_and_precision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config, train, val = train_config(finetune="head"), make_split(4), make_split(2, seed=1)
    on_cpu = cache_key(config, train, val, torch.device("cpu"))
    assert on_cpu == cache_key(config, train, val, torch.device("cpu"))
    fake_cuda(monkeypatch, gpus=1, bf16=True)
    in_bf16 = cache_key(config, train, val, torch.device("cuda", 0))
    fake_cuda(monkeypatch, gpus=1, bf16=False)
    in_fp16 = cache_key(config, train, val, torch.device("cuda", 0))
    assert len({on_cpu, in_bf16, in_fp16}) == 3


def test_seeding_fixes_the_cublas_workspace_before_cuda_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seed_everything(0)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled()


def test_a_gpu_reproduction_refuses_to_run_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpu-repro sets IMGPIPE_REQUIRE_CUDA: a driver too old for the wheel's CUDA must fail
    the job, not train on the CPU and match the CPU-made metrics."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv(inference.REQUIRE_CUDA_VARIABLE, "1")
    for device in ("auto", "cpu", "cuda"):
        with pytest.raises(ImgpipeError, match=r"sees no CUDA device|built without CUDA"):
            resolve_device(device)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(ImgpipeError, match="driver 580 or newer"):
        resolve_device("auto")
    monkeypatch.setenv(inference.REQUIRE_CUDA_VARIABLE, "0")
    assert resolve_device("auto") == torch.device("cpu")
