"""Data-parallel training under torchrun (distributed.py), on CPU processes with gloo.

The reference for two processes with batch B is one process with batch 2B: every step must see
the same tokens and take the same update. The runs are real `torchrun` launches in subprocesses
(rendezvous on a free local port); the split of batches between processes is checked in-process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cli_env, make_text, run_cli
from tinylm.train import state as trainstate
from tinylm.model.files import load_model
from tinylm.data.batches import ChunkBatches
from tinylm.util.errors import UsageError

TEXT = make_text(12000, seed=5)
FLAGS = ["--layers", "2", "--embd", "32", "--heads", "2", "--context", "16", "--warmup", "5", "--lr", "1e-2",
         "--eval-interval", "10", "--log-interval", "5", "--device", "cpu"]

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch has no torch.distributed")


def torchrun(args: list[str], cwd: Path, procs: int = 2, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "tinylm", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=cli_env(cwd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", **popen)


def run_torchrun(args: list[str], cwd: Path, procs: int = 2, timeout: float = 240) -> tuple[int, str]:
    p = torchrun(args, cwd, procs)
    try:
        _, err = p.communicate(timeout=timeout)  # a process waiting forever for the others fails here
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err


def tinylm_lines(err: str, *keys: str) -> list[str]:
    """tinylm's log messages (without timestamps) that contain one of `keys`."""
    return [ln.split(" | ", 1)[1] for ln in err.splitlines() if " | " in ln and any(k in ln for k in keys)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path).model.state_dict()


@pytest.fixture
def folder(tmp_path) -> Path:
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    return tmp_path


# ---------------------------------------------------------------- which batches each process takes

@pytest.mark.parametrize("world", [2, 3])
def test_the_processes_batches_together_are_one_batch_of_world_times_the_size(world):
    tokens = torch.arange(16 * 60 + 9)
    one = ChunkBatches(tokens, 16, 4 * world, seed=7)
    shards = [ChunkBatches(tokens, 16, 4, seed=7, rank=r, world=world) for r in range(world)]
    assert all(s.batches_per_epoch == one.batches_per_epoch for s in shards)
    for epoch in (0, 3):
        together = zip(*(s.epoch(epoch) for s in shards))
        for (x, y), parts in zip(one.epoch(epoch), together, strict=True):
            assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
    # resuming mid-epoch: `skip` counts each process's own batches
    full, rest = list(shards[1].epoch(2)), list(shards[1].epoch(2, skip=2))
    assert len(rest) == len(full) - 2 and all(torch.equal(a[0], b[0]) for a, b in zip(full[2:], rest))


def test_too_few_batches_for_every_process_is_an_error():
    with pytest.raises(UsageError, match="fewer than the 4 processes; give more text, a smaller --batch-size"):
        ChunkBatches(torch.arange(16 * 12 + 1), 16, 4, rank=0, world=4)  # 3 batches an epoch


def test_a_checkpoint_of_two_processes_does_not_fit_one():
    state = {"world": 2, "model_config": {}, "train_config": {}}
    assert trainstate.mismatches(state, {}, {}, None, world=1) == ["the number of processes (torchrun --nproc_per_node) 2 -> 1"]
    assert trainstate.mismatches(state, {}, {}, None, world=2) == []
    assert trainstate.mismatches({"model_config": {}, "train_config": {}}, {}, {}, None) == []  # older checkpoints: one


# ---------------------------------------------------------------- torchrun end to end

def test_two_processes_train_as_one_process_with_twice_the_batch(folder):
    common = ["train", "-d", "corpus.txt", *FLAGS, "--steps", "30", "--dropout", "0"]
    rc, err = run_torchrun([*common, "-o", "two.model", "--batch-size", "4"], folder)
    assert rc == 0, err
    rc1, _, err1 = run_cli([*common, "-o", "one.model", "--batch-size", "8"], folder)
    assert rc1 == 0, err1
    # the same losses step by step and at every validation (to the 4 decimals logged)...
    keys = ("| step ", "Validation loss")
    def losses(log: str) -> list[str]:  # "step 5 | loss 3.5517", "Validation loss: 2.9731, perplexity: 19.55"
        return [ln.split(" | lr")[0] if ln.startswith("step ") else ln.split(" (step")[0] for ln in tinylm_lines(log, *keys)]

    assert losses(err) == losses(err1) and len(losses(err1)) == 9
    # ... and the same weights, up to the order of float additions (Adam magnifies the last bits
    # of near-zero gradients, hence the tolerance)
    a, b = weights(folder / "two.last.model"), weights(folder / "one.last.model")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-3
    assert load_model(folder / "two.last.model").meta["tokens_seen"] == 30 * 8 * 16
    # only process 0 logs, and it says how the work is split
    assert len(tinylm_lines(err, "Training done after 30 steps")) == 1
    assert tinylm_lines(err, "Data parallel") == ["Data parallel: each step trains on 2 processes x 1 micro-batch(es) x 4 sequences"]


def test_a_time_budget_ends_every_process_at_the_same_step(folder):
    rc, err = run_torchrun(["train", "-d", "corpus.txt", "-o", "m.model", *FLAGS, "--batch-size", "4", "--time", "1.5",
                            "--checkpoint-minutes", "0.01"], folder)
    assert rc == 0, err  # a process that stopped alone would leave the other waiting until the timeout
    assert len(tinylm_lines(err, "Training done after")) == 1
    assert (folder / "m.model").is_file()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_sigterm_stops_all_processes_and_the_resumed_run_is_bit_identical(folder):
    common = ["train", "-d", "corpus.txt", *FLAGS, "--batch-size", "4", "--steps", "200", "--dropout", "0.1",
              "--checkpoint-every", "25"]
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    whole = torchrun([*common, "-o", "a/m.model"], folder)
    # the interrupted run: torchrun and its workers in their own process group, all sent SIGTERM
    # (as a cluster's scheduler or `kill` would), once training is under way
    victim = torchrun([*common, "-o", "b/m.model"], folder, start_new_session=True)
    seen = []
    try:
        for line in victim.stderr:
            seen.append(line)
            if "| step 60 |" in line:
                os.killpg(victim.pid, signal.SIGTERM)
                break
        seen += victim.stderr.readlines()
        victim.wait(timeout=120)
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    err = "".join(seen)
    stopped = tinylm_lines(err, "Interrupted after")
    assert len(stopped) == 1 and not (folder / "b" / "m.model.ckpt" / "step-00000200.ckpt").exists(), err
    step = int(stopped[0].split("after ")[1].split(" ")[0])
    assert 60 <= step < 200
    assert (folder / "b" / "m.model.ckpt" / trainstate.step_file(step)).is_file()  # saved at the step both agreed on

    rc, err = run_torchrun([*common, "-o", "b/m.model", "--resume"], folder)
    assert rc == 0, err
    resumed = tinylm_lines(err, "Resuming exactly")
    assert len(resumed) == 1 and resumed[0].startswith(f"Resuming exactly from checkpoint b/m.model.ckpt/{trainstate.step_file(step)}"), err
    _, whole_err = whole.communicate(timeout=240)
    assert whole.returncode == 0, whole_err
    for name in ("m.last.model", "m.model"):
        a, b = weights(folder / "a" / name), weights(folder / "b" / name)
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], name

    # the checkpoint holds both processes' random states, and fits only two processes
    state = trainstate.load_checkpoint(folder / "b" / "m.model.ckpt" / "step-00000200.ckpt")
    assert state["world"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])  # each its own dropout
    rc, _, err = run_cli([*common, "-o", "b/m.model", "--resume"], folder)
    assert rc == 2 and "the number of processes (torchrun --nproc_per_node) 2 -> 1" in err, err


def test_resuming_a_one_process_checkpoint_with_two_gives_each_its_own_random_stream(folder):
    common = ["train", "-d", "corpus.txt", "-o", "m.model", *FLAGS, "--batch-size", "4", "--dropout", "0.1"]
    rc, _, err = run_cli([*common, "--steps", "20"], folder)
    assert rc == 0, err
    rc, err = run_torchrun([*common, "--steps", "30", "--resume"], folder)
    assert rc != 0, err  # refused: another number of processes (and --steps)
    assert [ln for ln in err.splitlines() if ln.startswith("error: ")][0].startswith("error: cannot resume from"), err
    rc, err = run_torchrun([*common, "--steps", "30", "--resume", "--ignore-mismatch"], folder)
    assert rc == 0, err
    state = trainstate.load_checkpoint(folder / "m.model.ckpt" / "step-00000030.ckpt")
    assert state["world"] == 2 and not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])


@pytest.mark.parametrize("args, message", [
    (["-d", "missing.txt"], "error: dataset missing.txt does not exist; check the path given to -d/--dataset"),
    (["-d", "corpus.txt", "--batch-size", "400"], "error: the training text makes 1 batch(es) of --batch-size 400 per epoch, "
     "fewer than the 2 processes; give more text, a smaller --batch-size, or fewer processes"),
], ids=["missing-dataset", "too-few-batches"])
def test_bad_input_is_one_error_line_from_process_0_before_any_log(folder, args, message):
    rc, err = run_torchrun(["train", *args, "-o", "m.model", *FLAGS], folder)
    assert rc != 0  # torchrun's own exit code (1) and report of the failed processes follow tinylm's line
    assert [ln for ln in err.splitlines() if ln.startswith("error: ")] == [message], err
    assert " INFO | " not in err and not (folder / "m.model").exists()


# ---------------------------------------------------------------- on a GPU (NCCL; the device machine has one)

NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# fp32: in bf16 the order in which the GPU adds things up (attention's backward varies run to
# run) moves the weights by more than any tolerance that would still catch a wrong average
GPU_FLAGS = [f for f in FLAGS if f not in ("cpu", "--device")] + ["--device", "cuda", "--dtype", "fp32", "--batch-size", "8",
                                                                  "--steps", "30", "--dropout", "0"]


@NEEDS_CUDA
@pytest.mark.parametrize("speed", [["--cuda-graph"], ["--compile", "model", "--cuda-graph"], ["--compile", "off"]],
                         ids=["graph", "compiled-graph", "eager"])
def test_nccl_process_trains_as_a_plain_run(folder, speed):
    """One NCCL process: the all-reduce (recorded in the step's CUDA graph where there is one)
    averages over one process, so the run must train as the same command without torchrun."""
    common = ["train", "-d", "corpus.txt", *GPU_FLAGS, *speed]
    rc, err = run_torchrun([*common, "-o", "nccl.model"], folder, procs=1)
    assert rc == 0, err
    assert tinylm_lines(err, "Device:") == ["Device: cuda, 1 process (torchrun, data parallel)"]
    rc, _, err1 = run_cli([*common, "-o", "plain.model"], folder)
    assert rc == 0, err1
    vals = [[float(ln.split(": ")[1].split(",")[0]) for ln in tinylm_lines(e, "Validation loss")] for e in (err, err1)]
    assert len(vals[0]) == len(vals[1]) == 3 and max(abs(a - b) for a, b in zip(*vals)) < 2e-3, vals
    a, b = weights(folder / "nccl.last.model"), weights(folder / "plain.last.model")
    # not bit for bit: the GPU's sums (attention's backward) vary in order from run to run, and
    # Adam turns a near-zero gradient whose sign flips into a full step of the learning rate
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 2e-2


@NEEDS_CUDA
def test_more_processes_than_gpus_is_one_error_line(folder):
    n = torch.cuda.device_count()
    rc, err = run_torchrun(["train", "-d", "corpus.txt", "-o", "m.model", *GPU_FLAGS], folder, procs=n + 1)
    assert rc != 0
    assert [ln for ln in err.splitlines() if ln.startswith("error: ")] == [
        f"error: torchrun started {n + 1} processes on this machine but PyTorch sees {n} CUDA GPU(s); use --nproc_per_node {n} "
        "(one GPU per process), or add -c / --device cpu to train on CPU processes"], err
