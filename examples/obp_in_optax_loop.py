"""FedOBP's decoupling inside a plain JAX/optax training loop (no simulator).

Two "clients" fit linear regressions with different targets. Each round, the
server's model and each client's last model are merged with
``ops.fedobp_decouple`` (only the entries that moved most stay personal), the
client trains with optax, and the server averages. Run:

  .venv/bin/python examples/obp_in_optax_loop.py
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_pfl import ops


def main(rounds: int = 30, q: float = 0.75) -> dict:
  key = jax.random.key(0)
  x = jax.random.normal(key, (2, 64, 4))                 # [clients, examples, features]
  true_w = jnp.array([[1.0, 2.0, 0.0, -1.0], [1.0, 2.0, 3.0, -1.0]])  # differ in entry 2
  y = jnp.einsum("cnd,cd->cn", x, true_w)
  init = {"w": jnp.zeros(4), "b": jnp.zeros(())}
  opt = optax.sgd(0.1)

  def loss(params, xc, yc):
    return jnp.mean((xc @ params["w"] + params["b"] - yc) ** 2)

  @jax.jit
  def client_round(global_params, last, xc, yc):
    merged, keep = ops.fedobp_decouple(last, global_params, q)      # Eq. 7-9, 19
    state = opt.init(merged)
    params = merged
    for _ in range(10):
      grads = jax.grad(loss)(params, xc, yc)
      updates, state = opt.update(grads, state)
      params = optax.apply_updates(params, updates)
    return params, keep

  global_params, last = init, [init, init]
  for _ in range(rounds):
    outs = [client_round(global_params, last[c], x[c], y[c]) for c in range(2)]
    last = [p for p, _ in outs]
    global_params = jax.tree.map(lambda a, b: (a + b) / 2, *last)
  merged = [ops.fedobp_decouple(last[c], global_params, q) for c in range(2)]
  losses = [float(loss(merged[c][0], x[c], y[c])) for c in range(2)]
  global_losses = [float(loss(global_params, x[c], y[c])) for c in range(2)]
  keep_w = [merged[c][1]["w"].tolist() for c in range(2)]
  print(f"personalized-model losses {losses}; global-model losses {global_losses}")
  print(f"personal entries of w per client: {keep_w}")
  return {"personal_losses": losses, "global_losses": global_losses, "keep_w": keep_w}


if __name__ == "__main__":
  main()
