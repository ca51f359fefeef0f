"""How clients run: one backend per execution, the only code that maps clients.

Following fedjax's ``for_each_client`` backends, everything that decides *how*
a cohort's clients execute lives here; the round itself is a pure function
(:mod:`fedjax_pfl.core.rounds`) that a backend is handed:

* :class:`HostBackend`: the host drives the cohort, one client (or one vmapped
  chunk) at a time, its local steps stepped from Python (steps that are no-ops
  for every client of a chunk are skipped) or in one compiled loop (one
  client: its active steps only); the aggregation is one jitted program. The
  measured CPU default.
* :class:`CompiledBackend`: ``jax.vmap`` (chunked through ``jax.lax.map``, or
  packed onto lanes, :mod:`fedjax_pfl.core.lanes`) + ``lax.scan``: a round is
  one traced program, many rounds one ``lax.scan``, several runs one ``vmap``
  over runs; the cohort axis is sharded over a ``jax.sharding.Mesh`` of every
  device of every process. The accelerator default.

Why both exist: :func:`fedjax_pfl.core.execution.default_execution`. Programs
are cached per backend by the value of the function they compile (never by
``id()``, which can be reused after an object dies).
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedjax_pfl.core import cohort, lanes
from fedjax_pfl.core.cohort import (
  CLIENT_AXIS,
  ClientMajorData,
  ClientTask,
  DeviceData,
  client_data,
  client_major_rows,
  data_axes,
  gather,
  local_positions,
)
from fedjax_pfl.core.execution import Execution, default_execution  # noqa: F401 (re-export)
from fedjax_pfl.types import PyTree

DATA_PLACEMENTS = ("replicated", "by_client")


def make_backend(execution: Execution, num_clients: int) -> "HostBackend | CompiledBackend":
  """:class:`CompiledBackend` for vmap + scan, else :class:`HostBackend`.

  Raises:
    ValueError: an invalid ``execution`` (:meth:`Execution.validate`).
  """
  execution.validate()
  cls = CompiledBackend if execution.fused else HostBackend
  return cls(execution, num_clients)


class _Backend:
  """Placement, cohort padding and the program cache shared by both backends."""

  fused = False
  supports_run_batching = False

  def __init__(self, execution: Execution, num_clients: int):
    execution.validate()
    self.execution = execution
    self.num_clients = int(num_clients)
    self.mesh: Mesh | None = None
    self._programs: dict[Any, Any] = {}

  def replicated(self):
    """Sharding of server state and pooled data (None without a mesh)."""
    return None if self.mesh is None else NamedSharding(self.mesh, PartitionSpec())

  def client_sharding(self):
    """Sharding of the stacked ``[N, ...]`` client state: split over the
    ``clients`` axis when ``N`` is a multiple of the device count, else
    replicated (None without a mesh)."""
    if self.mesh is None:
      return None
    if self.num_clients % self.mesh.size == 0:
      return NamedSharding(self.mesh, PartitionSpec(CLIENT_AXIS))
    return self.replicated()

  def put(self, tree: PyTree, sharding=None) -> PyTree:
    """Places ``tree`` as global arrays (replicated by default) on the mesh;
    identity without a mesh. Every process must pass the same values."""
    if self.mesh is None:
      return tree
    sharding = sharding or self.replicated()

    def leaf(x):
      if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x if x.sharding == sharding else jax.device_put(x, sharding)
      if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = jax.device_put(np.asarray(jax.random.key_data(x)), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
      return jax.device_put(np.asarray(x), sharding)  # host values, same on every process
    return jax.tree.map(leaf, tree)

  def place_state(self, server: PyTree, clients: PyTree) -> tuple[PyTree, PyTree]:
    """Server replicated, stacked client state split over the client axis."""
    return self.put(server), self.put(clients, self.client_sharding())

  def put_data(self, x, y, train_idx, train_counts, test_idx, test_counts, *,
               placement: str = "replicated") -> DeviceData | ClientMajorData:
    """The resident dataset on device.

    Args:
      x, y, train_idx, train_counts, test_idx, test_counts: host arrays of
        :class:`~fedjax_pfl.data.FederatedData`.
      placement: ``"replicated"`` (pooled arrays on every device) or
        ``"by_client"`` (:class:`ClientMajorData`, split over the client axis
        like the client state; with a split mesh each process builds only its
        own clients' rows through ``jax.make_array_from_callback``).

    Raises:
      ValueError: an unknown ``placement``.
    """
    if placement == "replicated":
      arrays = (x, y, train_idx, train_counts, test_idx, test_counts)
      return self.put(DeviceData(*(jnp.asarray(a) for a in arrays)))
    if placement != "by_client":
      raise ValueError(f"data_placement={placement!r}; allowed: {', '.join(DATA_PLACEMENTS)}")
    tr_pos, te_pos = local_positions(train_idx, test_idx)
    small = tuple(np.asarray(a) for a in (tr_pos, train_counts, te_pos, test_counts))
    sharding = self.client_sharding()
    if sharding is None or sharding == self.replicated():
      cx, cy = client_major_rows(x, y, train_idx, test_idx)
      placed = self.put((cx, cy, *small)) if self.mesh is not None else tuple(
          jnp.asarray(a) for a in (cx, cy, *small))
      return ClientMajorData(placed[0], placed[1], *placed[2:])
    m = train_idx.shape[1] + test_idx.shape[1]
    n = train_idx.shape[0]

    def build(which):
      shape = (n, m) + (np.shape(x)[1:] if which == 0 else ())
      dtype = np.asarray(x).dtype if which == 0 else np.asarray(y).dtype

      def shard(index):  # called only for this process's devices
        return client_major_rows(x, y, train_idx, test_idx, index[0])[which]
      return jax.make_array_from_callback(shape, sharding, shard, dtype=dtype)
    tr, trc, te, tec = self.put(small)
    return ClientMajorData(build(0), build(1), tr, trc, te, tec)

  def padded_size(self, cohort_size: int) -> int:
    """``C'``: ``cohort_size`` rounded up to a multiple of the chunk size and
    device count (vmap), else unchanged."""
    multiple = 1
    if self.execution.parallelism == "vmap":
      multiple = int(np.lcm(self.execution.chunk_size or 1, self.execution.num_devices or 1))
    return cohort_size + (-cohort_size) % multiple

  def pad_cohort(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [C'], valid [C'])`` padded with the id ``N``."""
    return cohort.pad_ids(ids, self.padded_size(len(ids)), self.num_clients)

  def jit(self, fn: Callable[..., Any], *, donate: Sequence[int] = (),
          static: Sequence[int] = (), state_outputs: bool = False,
          replicated_output: bool = False):
    """``jax.jit(fn)`` cached by ``(fn, options)``. ``state_outputs``: the
    outputs are ``(server, clients, rest)`` placed like a state;
    ``replicated_output``: one output the host can read on every process."""
    key = (fn, tuple(donate), tuple(static), state_outputs, replicated_output)
    if key not in self._programs:
      rep = self.replicated()
      shardings = {}
      if rep is not None and state_outputs:
        shardings = {"out_shardings": (rep, self.client_sharding(), rep)}
      elif rep is not None and replicated_output:
        shardings = {"out_shardings": rep}
      self._programs[key] = jax.jit(fn, donate_argnums=tuple(donate),
                                    static_argnums=tuple(static), **shardings)
    return self._programs[key]

  def install(self, fn: Callable[..., Any], executable, **options) -> None:
    """Makes :meth:`jit` of ``(fn, options)`` return ``executable`` (an AOT-compiled
    ``jit(fn).lower(...).compile()``; ``fn`` without static arguments)."""
    self.jit(fn, **options)
    self._programs[(fn, tuple(options.get("donate", ())), tuple(options.get("static", ())),
                    options.get("state_outputs", False),
                    options.get("replicated_output", False))] = executable

  def cache_sizes(self) -> dict[str, int]:
    """``{program name: number of compiled variants}`` of every jitted program
    of this backend (a retrace shows as a count above the expected one)."""
    sizes: dict[str, int] = {}
    for key, progs in self._programs.items():
      progs = progs if isinstance(progs, tuple) else (progs,)
      name = getattr(key[0], "__name__", type(key[0]).__name__)
      for i, prog in enumerate(progs):
        label = f"{name}[{i}]" if len(progs) > 1 else name
        size = prog._cache_size() if hasattr(prog, "_cache_size") else 0
        sizes[label] = sizes.get(label, 0) + size
    return sizes

  def check_run_batching(self) -> None:
    """Raises ValueError unless several runs can be vmapped into one program."""
    if not self.supports_run_batching:
      raise ValueError("batching runs (seeds, hyperparameters) needs system.parallelism=vmap, "
                       "system.step_loop=scan and one device (system.num_devices=1)")

  def map_clients(self, fn: Callable[..., Any], shared, stacked_clients, data, ids: jax.Array,
                  *, test: bool = True, with_ids: bool = False) -> PyTree:
    """``fn(shared, client, client_data) -> out`` for every id in ``ids`` in a
    trace (``lax.map``; under vmap in chunks of ``execution.eval_chunk``);
    ``test``: the clients' test (else train) view; ``with_ids``: ``fn`` also
    gets the client id as a fourth argument."""
    def one(cid):
      args = (shared, gather(stacked_clients, cid), client_data(data, cid, test=test))
      return fn(*args, cid) if with_ids else fn(*args)
    if self.execution.parallelism == "vmap":
      return jax.lax.map(one, ids, batch_size=self.execution.eval_chunk(len(ids)))
    return jax.lax.map(one, ids)


class HostBackend(_Backend):
  """The host maps the cohort (module docstring); no mesh, no run batching."""

  def _pieces(self, task: ClientTask, batched: bool):
    key = (task, batched)  # by value: an id() can be reused after the object dies
    if key not in self._programs:
      lift = (lambda f, axes: jax.vmap(f, in_axes=axes)) if batched else (lambda f, axes: f)

      def pro(shared, stacked, data, ids):
        cdata = client_data(data, ids)
        return lift(task.prologue, (None, 0, data_axes(data), 0))(
            shared, gather(stacked, ids), cdata, ids)

      def step(state, t, data, ids):
        return lift(task.step, (0, None, data_axes(data)))(state, t, client_data(data, ids))

      def scan_steps(state, data, ids):
        cdata = client_data(data, ids)
        f = lift(task.step, (0, None, data_axes(data)))
        if not batched and task.schedule is not None:  # one client: its active steps only
          total, step_of = task.schedule(cdata.count)
          return jax.lax.fori_loop(0, total, lambda k, s: f(s, step_of(k), cdata), state)
        return jax.lax.scan(lambda s, t: (f(s, t, cdata), None), state,
                            jnp.arange(task.num_steps))[0]

      def epi(shared, stacked, state, ids):
        return lift(task.epilogue, (None, 0, 0))(shared, gather(stacked, ids), state)

      self._programs[key] = tuple(jax.jit(f) for f in (pro, step, scan_steps, epi))
    return self._programs[key]

  def install_pieces(self, task: ClientTask, pieces: tuple) -> None:
    """Use ``pieces`` (prologue, step, scan_steps, epilogue; e.g. AOT-compiled
    executables) for ``task`` from now on."""
    self._programs[(task, self.execution.parallelism == "vmap")] = tuple(pieces)

  def map_cohort(self, task: ClientTask, shared, stacked_clients, data, ids: np.ndarray,
                 counts: np.ndarray) -> PyTree:
    """Runs ``task`` for padded cohort ``ids [C]`` from the host; outputs ``[C]``.
    ``counts``: the host-side train counts of ``ids`` (for step skipping)."""
    batched = self.execution.parallelism == "vmap"
    pro, step, scan_steps, epi = self._pieces(task, batched)
    size = (self.execution.chunk_size or len(ids)) if batched else 1
    outputs = []
    for start in range(0, len(ids), size):
      group = ids[start:start + size] if batched else ids[start]
      group_counts = counts[start:start + size]
      state = pro(shared, stacked_clients, data, group)
      if self.execution.step_loop == "scan":
        state = scan_steps(state, data, group)
      else:
        for t in task.active_steps(group_counts):
          state = step(state, np.int32(t), data, group)
      outputs.append(epi(shared, stacked_clients, state, group))
    if batched:
      return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outputs)
    return cohort.stack_outputs(outputs)

  def evaluate_sums(self, prepare, batch_fn, shared, stacked_clients, data, counts: np.ndarray,
                    batch_size: int, traced_fn: Callable[..., Any]) -> np.ndarray:
    """Per-client evaluation sums ``[N, K]`` (host numpy).

    Sequential: one client at a time from the host, ``p = prepare(shared,
    client)`` then ``batch_fn(p, test_data, b)`` for each real test batch;
    vmap: ``traced_fn(shared, stacked, data, prepare)`` as one program."""
    if self.execution.parallelism == "vmap":
      prog = self.jit(traced_fn, static=(3,))
      return np.asarray(prog(shared, stacked_clients, data, prepare))
    key = (prepare, batch_fn, "eval")  # bound methods compare equal, ids do not
    if key not in self._programs:
      self._programs[key] = (
          jax.jit(lambda shared, stacked, i: prepare(shared, gather(stacked, i))),
          jax.jit(lambda p, data, i, b: batch_fn(p, client_data(data, i, test=True), b)))
    prep, run = self._programs[key]
    rows = []
    for i, n in enumerate(np.asarray(counts)):
      p = prep(shared, stacked_clients, np.int32(i))
      sums = [run(p, data, np.int32(i), np.int32(b)) for b in range(-(-int(n) // batch_size))]
      rows.append(np.asarray(sum(sums[1:], sums[0])) if sums else None)
    width = next((r.shape for r in rows if r is not None), (2,))
    return np.stack([np.zeros(width) if r is None else r for r in rows])


class CompiledBackend(_Backend):
  """vmap + scan: rounds, round loops and batched runs as traced programs (module docstring)."""

  fused = True

  def __init__(self, execution: Execution, num_clients: int):
    super().__init__(execution, num_clients)
    if not execution.fused:
      raise ValueError(f"CompiledBackend: {execution}; allowed: vmap + scan")
    n_dev = execution.num_devices or 1
    if n_dev > 1 or jax.process_count() > 1:
      # Every device of every process (jax.devices() is global under jax.distributed).
      self.mesh = Mesh(np.array(jax.devices()[:n_dev]), (CLIENT_AXIS,))

  @property
  def supports_run_batching(self) -> bool:
    """Several runs vmapped into one program: one device only."""
    return self.mesh is None and self.execution.supports_run_batching

  def map_cohort(self, task: ClientTask, shared, stacked_clients, data, ids: jax.Array) -> PyTree:
    """Runs ``task`` for cohort ``ids [C]`` in a trace (``execution.lanes``:
    :func:`fedjax_pfl.core.lanes.packed_map`); outputs stacked ``[C]``."""
    def one(cid):
      client = gather(stacked_clients, cid)
      cdata = client_data(data, cid)
      state = task.prologue(shared, client, cdata, cid)
      state, _ = jax.lax.scan(lambda s, t: (task.step(s, t, cdata), None), state,
                              jnp.arange(task.num_steps))
      return task.epilogue(shared, client, state)
    if self.mesh is not None:
      ids = jax.lax.with_sharding_constraint(ids, NamedSharding(self.mesh,
                                                                PartitionSpec(CLIENT_AXIS)))
    if self.execution.lanes:
      return lanes.packed_map(task, shared, stacked_clients, data, ids, self.execution.lanes)
    if self.execution.chunk_size:
      return jax.lax.map(one, ids, batch_size=self.execution.chunk_size)
    return jax.vmap(one)(ids)

  def vmap_runs(self, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``jax.vmap`` of ``fn`` over a leading axis of runs (seeds, hyperparameters)
    of every argument; raises as :meth:`check_run_batching` (e.g. with a mesh)."""
    self.check_run_batching()
    return jax.vmap(fn)  # vmap over runs, not clients

  def evaluate_sums(self, prepare, batch_fn, shared, stacked_clients, data, counts,
                    batch_size: int, traced_fn: Callable[..., Any]) -> np.ndarray:
    """Per-client evaluation sums ``[N, K]`` as one program (host numpy)."""
    del batch_fn, counts, batch_size
    prog = self.jit(traced_fn, static=(3,), replicated_output=True)
    return np.asarray(prog(shared, stacked_clients, data, prepare))
