"""Training across processes: synchronous data parallel (DDP) and an asynchronous parameter server.

Both run the one loop (:func:`edgelearn.training.loop.fit`) and build the same :class:`Job` in every
process; they differ in who steps the optimiser.

- ``ddp``: ``workers`` processes, each a replica wrapped in ``DistributedDataParallel`` (gloo),
  each training on every world-th image of the epoch; gradients are averaged every step. A worker
  that dies stops the collective, so the run restarts every process from the last epoch's checkpoint
  (as torchrun's elastic agent does), up to ``max_restarts`` times.
- ``ps`` (Mottakin's thesis, Algorithm 1, on ``torch.distributed.rpc``): rank 0 is the parameter server and
  holds the model and the optimiser (so its state, AdamW's moments, lives on across epochs and is
  checkpointed and resumed). Each worker asks the server for the next batch of the epoch with the
  current trainable parameters, runs forward and backward on it and sends the gradients back; the
  server steps (and applies the weight constraint) without waiting for the other workers
  (asynchronous SGD). Batches are handed out on demand, so a fast worker takes more and an epoch
  never waits for a slow worker's fixed share. The server validates and checkpoints between epochs.
  A worker that dies is dropped and its unfinished batch goes to the others: the run goes on.
  Across machines the server listens on an address (:func:`run_ps` with ``address``) and each
  worker joins it (:func:`join_ps`).
"""

import os
import sys
import threading
import traceback
import warnings
from collections import deque
from urllib.parse import parse_qs, urlparse

import torch
import torch.multiprocessing as mp
from torch.distributed.rendezvous import register_rendezvous_handler
from torch.utils.data import default_collate

from edgelearn.errors import EdgelearnError, ParameterError
from edgelearn.training.config import TrainConfig
from edgelearn.training.finetune import Job, prepare
from edgelearn.training.loop import check_checkpoint, cross_entropy, fit, max_norm_, train_mode


class TrainingError(EdgelearnError, RuntimeError):
    """A distributed run could not finish (every worker lost, or too many restarts)."""


def listen(world: int, address: str = "127.0.0.1", port: int = 0) -> torch.distributed.TCPStore:
    """The rendezvous store, listening before any worker starts. (Picking a free port and binding it
    later races: a worker retrying to connect to a local port nobody listens on yet can end up
    connected to itself, and then waits forever.)"""
    return torch.distributed.TCPStore(address, port, world, is_master=True, wait_for_workers=False)


def _join(port: int, world: int, address: str = "127.0.0.1") -> torch.distributed.TCPStore:
    return torch.distributed.TCPStore(address, port, world, is_master=False)


def _say(line: str) -> None:
    """A worker process's log line (stderr: stdout is for the command's result)."""
    print(line, file=sys.stderr, flush=True)


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _check(config: TrainConfig) -> Job:
    """Build the job here first, so that bad settings (or a checkpoint of another run) fail with a clear
    error before any process starts."""
    job = prepare(config)
    if config.resume:
        check_checkpoint(job.fit_args["checkpoint"], job.fit_args["config"])
    return job


def _result(job: Job) -> tuple[Job, list, dict]:
    """The job, history and best epoch of a finished run, from its last checkpoint."""
    state = torch.load(job.fit_args["checkpoint"], map_location="cpu", weights_only=True)
    return job, state["history"], state["best"]


# --- synchronous data parallel ---------------------------------------------------------------------

def run_ddp(config: TrainConfig, *, max_restarts: int = 3, log=print) -> tuple[Job, list, dict]:
    """Train with ``config.workers`` DDP processes on loopback; restart them from the checkpoint if one dies."""
    workers, threads = config.workers, config.threads or default_threads(config.workers)
    job = _check(config)
    for attempt in range(max_restarts + 1):
        store = listen(workers)  # a fresh one per attempt: the last one holds a dead run's keys
        try:
            mp.start_processes(_ddp_rank, args=(workers, store.port, config, threads, config.resume or attempt > 0),
                               nprocs=workers, start_method="spawn")
            break
        except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
            if attempt == max_restarts:
                raise TrainingError(f"data-parallel training failed: {str(exc).strip().splitlines()[-1]}") from exc
            log(f"a worker failed ({str(exc).strip().splitlines()[0]}); restarting all {workers} from the "
                f"last checkpoint (restart {attempt + 1} of {max_restarts})")
    return _result(job)


def _ddp_rank(rank: int, world: int, port: int, config: TrainConfig, threads: int, resume: bool) -> None:
    from torch.nn.parallel import DistributedDataParallel

    _quiet()
    torch.set_num_threads(threads)
    torch.distributed.init_process_group("gloo", store=_join(port, world), rank=rank, world_size=world)
    try:
        job = prepare(config)
        _say(f"ddp worker {rank} (pid {os.getpid()}) ready")
        model = DistributedDataParallel(job.model)
        fit(model, job.optimizer, job.train_set, job.val_set, learning=job.learning, shard=(rank, world),
            resume=resume, log=_say if rank == 0 else (lambda *a: None), **job.fit_args)
    finally:
        torch.distributed.destroy_process_group()


# --- asynchronous parameter server ---------------------------------------------------------------

SERVER = "server"
_job = None  # this process's Job (server: the model and optimiser trained; worker: the replica that computes)
_epoch = None  # the server's current epoch: its batches, handed out on demand
_lock = threading.Lock()
_stop = threading.Event()
_graceful = [True]
# torch's note about its own internals (RPC's gloo group), not ours to act on
QUIET = [("ignore", ".*as a ProcessGroup.*")]


def _quiet() -> None:
    for action, message in QUIET:
        warnings.filterwarnings(action, message=message)


def _trainable(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _statistics(model) -> dict[str, torch.Tensor]:
    """The batch norms' running statistics (floating-point buffers)."""
    return {n: b for n, b in model.named_buffers() if b.is_floating_point()}


class _Epoch:
    """Runs on the server: one epoch's batches, each handed to whichever worker asks next (a fast
    worker takes more, nobody waits for a slow one's share); a lost worker's batch goes back."""

    def __init__(self, indices: list[int], batch_size: int):
        batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()  # a batch of one gives batch norm no statistics (as in the single-process loop)
        self.todo = deque(batches)
        self.busy: dict[int, list[int]] = {}  # worker rank -> the batch it computes
        self.totals = [0.0, 0, 0]  # loss sum, correct, count of the batches stepped

    def hand_out(self, rank: int) -> list[int] | None:
        batch = self.todo.popleft() if self.todo else None
        self.busy[rank] = batch
        return batch

    def done(self, rank: int, sums: tuple[float, int, int]) -> None:
        self.busy.pop(rank, None)
        self.totals = [a + b for a, b in zip(self.totals, sums, strict=True)]

    def lost(self, rank: int) -> list[int] | None:
        batch = self.busy.pop(rank, None)
        if batch:
            self.todo.append(batch)
        return batch


def _fetch(rank: int) -> tuple[list[int], list[torch.Tensor], dict[str, torch.Tensor]] | None:
    """Runs on the server: worker ``rank``'s next batch with the current parameters and statistics
    (copies: the optimiser goes on stepping), or None when the epoch has no batch left."""
    with _lock, torch.no_grad():
        batch = _epoch.hand_out(rank)
        if batch is None:
            return None
        return (batch, [p.detach().clone() for p in _trainable(_job.model)],
                {n: b.clone() for n, b in _statistics(_job.model).items()})


def _push(rank: int, grads: list[torch.Tensor], statistics: dict[str, torch.Tensor],
          sums: tuple[float, int, int]) -> None:
    """Runs on the server: one optimiser step with a worker's gradients (the server's optimiser, so
    its state lives on and is checkpointed), the weight constraint, the worker's batch-norm statistics."""
    with _lock:
        for param, grad in zip(_trainable(_job.model), grads, strict=True):
            param.grad = grad
        _job.optimizer.step()
        _job.optimizer.zero_grad()
        if _job.fit_args.get("max_norm"):
            max_norm_(_job.learning, _job.fit_args["max_norm"])
        with torch.no_grad():
            own = _statistics(_job.model)
            for name, value in statistics.items():
                own[name].copy_(value)
        _epoch.done(rank, sums)


def _finish(graceful: bool) -> None:
    _graceful[0] = graceful
    _stop.set()


def _worker_epoch(epoch: int, seed: int) -> None:
    """Runs on a worker: batches from the server until the epoch has none left; for each, the gradients
    on the server's current parameters go back to the server, which steps without waiting for the
    other workers (asynchronous SGD)."""
    from torch.distributed import rpc

    job, rank = _job, rpc.get_worker_info().id
    _say(f"ps worker {rank} (pid {os.getpid()}) starts epoch {epoch + 1}")
    torch.manual_seed(seed * 100_003 + epoch + 7919 * rank)
    train_mode(job.model, job.learning)
    params = _trainable(job.model)
    while (work := rpc.rpc_sync(SERVER, _fetch, args=(rank,))) is not None:
        batch, values, statistics = work
        with torch.no_grad():
            for param, value in zip(params, values, strict=True):
                param.copy_(value)
            own = _statistics(job.model)
            for name, value in statistics.items():
                own[name].copy_(value)
        job.model.zero_grad()
        loss, logits, target = cross_entropy(job.model, default_collate([job.train_set[i] for i in batch]))
        loss.backward()
        sums = (loss.item() * len(target), int((logits.argmax(1) == target).sum()), len(target))
        rpc.rpc_sync(SERVER, _push, args=(rank, [p.grad for p in params], _statistics(job.model), sums))


def run_ps(config: TrainConfig, *, log=print) -> tuple[Job, list, dict]:
    """Run the parameter server and ``config.workers`` worker processes started here (loopback) or, with
    ``config.address`` (``HOST:PORT``), listen there for workers started on their machines by :func:`join_ps`.

    This process only holds the rendezvous store and waits: the server runs in a process of its own
    (torch's RPC cannot be started twice in one process)."""
    workers, address = config.workers, config.address
    threads = config.threads or default_threads(workers)
    job = _check(config)
    host, port = _host_port(address) if address else ("127.0.0.1", 0)
    store = listen(workers + 1, host, port)
    if address:
        log(f"parameter server listening on {host}:{store.port} for {workers} workers")
    context = mp.get_context("spawn")
    server = context.Process(target=_ps_server, args=(config, store.port, threads))
    procs = [] if address else [context.Process(target=_ps_worker, daemon=True,
                                                args=(rank, workers + 1, store.port, config, threads))
                                for rank in range(1, workers + 1)]
    for p in (server, *procs):
        p.start()
    server.join()
    for p in procs:
        p.join(timeout=30 if server.exitcode == 0 else 0)
        if p.is_alive():
            p.kill()
    if server.exitcode != 0:
        raise TrainingError("the parameter server failed (its messages are above); the last checkpoint holds "
                            "the finished epochs (--resume)")
    return _result(job)


def join_ps(config: TrainConfig) -> None:
    """Be worker ``config.rank`` (1..workers) of the parameter server at ``config.address`` until it finishes."""
    host, port = _host_port(config.address)
    _ps_worker(config.rank, config.workers + 1, port, config, config.threads or (os.cpu_count() or 1), host)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ParameterError(f"an address is HOST:PORT, got {address!r}")
    return host, int(port)


def _ps_server(config: TrainConfig, port: int, threads: int) -> None:
    serve_parameters(config, port=port, threads=threads, log=_say)


def serve_parameters(config: TrainConfig, *, port: int, threads: int | None = None, log=print) -> None:
    """Rank 0: hold the model and optimiser, hand each epoch's batches to the live workers as they ask,
    step with their gradients, validate and checkpoint.
    ``port``: the rendezvous store's on this machine (:func:`listen`), which the workers join too."""
    from torch.distributed import rpc

    global _job
    _quiet()
    workers = config.workers
    _job = prepare(config)
    if threads:
        torch.set_num_threads(threads)
    rpc.init_rpc(SERVER, rank=0, world_size=workers + 1,
                 rpc_backend_options=_rpc_options(f"edgelearn-store://127.0.0.1:{port}"))
    live = list(range(1, workers + 1))  # the ranks of the workers still running

    def run_epoch(epoch: int, indices: list[int]) -> tuple[float, int, int]:
        global _epoch
        _epoch = _Epoch(indices, _job.fit_args["batch_size"])
        while _epoch.todo:  # at first, and again when a lost worker's batch went back
            if not live:
                raise TrainingError("every worker failed; the last checkpoint holds the finished epochs")
            futures = {rank: rpc.rpc_async(f"worker{rank}", _worker_epoch, args=(epoch, config.seed),
                                           timeout=0) for rank in live}
            for rank, future in futures.items():
                try:
                    future.wait()
                except RuntimeError as exc:
                    live.remove(rank)
                    with _lock:
                        _epoch.lost(rank)
                    log(f"worker{rank} failed ({str(exc).splitlines()[0][:120]}); {len(live)} worker(s) go on")
        return tuple(_epoch.totals)

    try:
        fit(_job.model, _job.optimizer, _job.train_set, _job.val_set, learning=_job.learning, run_epoch=run_epoch,
            resume=config.resume, log=log, **_job.fit_args)
        graceful = len(live) == workers  # a lost worker would keep a graceful shutdown waiting forever
        for future in [rpc.rpc_async(f"worker{rank}", _finish, args=(graceful,)) for rank in live]:
            try:
                future.wait()
            except RuntimeError:  # a worker told to stop without ceremony may close before it answers
                pass
    except BaseException:
        graceful = False
        raise
    finally:
        rpc.shutdown(graceful=graceful)


def _ps_worker(rank: int, world: int, port: int, config: TrainConfig, threads: int,
               address: str = "127.0.0.1") -> None:
    from torch.distributed import rpc

    global _job
    _quiet()
    torch.set_num_threads(threads)
    try:
        _job = prepare(config)
        rpc.init_rpc(f"worker{rank}", rank=rank, world_size=world,
                     rpc_backend_options=_rpc_options(f"edgelearn-store://{address}:{port}"))
        _stop.wait()
        rpc.shutdown(graceful=_graceful[0])
    except Exception:  # a worker's failure is the server's to handle; say why here
        traceback.print_exc()
        raise


def _rpc_options(init_method: str):
    from torch.distributed import rpc

    # an epoch's share is one call: no timeout on it (a dead worker fails it at once); 5 min for setup
    return rpc.TensorPipeRpcBackendOptions(init_method=init_method, num_worker_threads=8, rpc_timeout=300)


def _store_rendezvous(url: str, **kwargs):
    """Every rank joins the store that :func:`listen` opened in the launching process (torch's
    ``tcp://`` would make rank 0 open it, late)."""
    parsed = urlparse(url)
    query = parse_qs(parsed.query)
    rank, world = int(query["rank"][0]), int(query["world_size"][0])
    yield _join(parsed.port, world, parsed.hostname), rank, world


register_rendezvous_handler("edgelearn-store", _store_rendezvous)
