"""Autoregressive inference in CUDA graphs (opt-in).

A rollout such as the seeds' test loop (one step at a time, the prediction fed back as
the next input, T=1 calls into a recurrent layer with a Linear head) is all launch
overhead on a GPU: a few microseconds of work per step behind tens of microseconds of
Python and kernel launches. `GraphedRollout` captures `unroll` steps, feedback included,
in one CUDA graph and replays it, so a step costs a fraction of a graph launch.

    step = lambda x, h: model(x, h)             # -> (prediction, new hidden)
    roll = GraphedRollout(step, x0, h0, unroll=8)
    preds, h = roll(x0, h0, steps=100)         # preds: [100, *prediction.shape]

`rollout` is the same loop run eagerly, on any device: the reference GraphedRollout is
tested against, and what to call on the CPU.

Rules of the capture (those of torch.cuda.graph): `step` must run the same kernels on
tensors of the same shapes every call, must not synchronise with the host (fastrnn's
CUDA kernels never do, for padded input), and runs under torch.no_grad(). The model's
parameters are read in place at every replay, so updating them (optimizer.step(),
load_state_dict copying into the same tensors) is seen; replacing parameter tensors is
not. Inputs given to a call are copied into the graph's buffers; results are fresh
tensors.
"""
import torch

__all__ = ["GraphedRollout", "rollout"]


def _as_tuple(hidden):
    if isinstance(hidden, torch.Tensor):
        return (hidden,)
    return tuple(hidden) if isinstance(hidden, (tuple, list)) else (hidden,)


def _like(template, states):
    """states (a tuple) in the form of `template`: a Tensor or a tuple."""
    return states[0] if isinstance(template, torch.Tensor) else tuple(states)


def rollout(step, x0, hidden, steps, feedback=None):
    """`steps` calls of step(x, hidden) -> (y, hidden), starting from x0, each y fed back
    as the next x (through `feedback(y)` when given). Returns (ys stacked on a new first
    dimension [steps, *y.shape], final hidden)."""
    if steps < 1:
        raise ValueError(f"rollout: steps must be >= 1, got {steps}")
    ys, x = [], x0
    for _ in range(steps):
        y, hidden = step(x, hidden)
        ys.append(y)
        x = y if feedback is None else feedback(y)
    return torch.stack(ys), hidden


class GraphedRollout:
    """`rollout` with `unroll` steps per CUDA-graph replay (see the module docstring).

    step(x, hidden) -> (y, hidden): one step of the model; hidden is a Tensor or a tuple
    of Tensors (LSTM: (h, c)), returned in the same form. feedback(y) -> next x (default:
    y itself), must have x's shape and dtype. example_input / example_hidden: CUDA tensors
    of the shapes and dtypes every call will use (their values only warm up the capture).
    """

    def __init__(self, step, example_input, example_hidden, *, unroll=1, feedback=None, warmup=3):
        if not isinstance(unroll, int) or unroll < 1:
            raise ValueError(f"GraphedRollout: unroll must be a positive int, got {unroll!r}")
        if not isinstance(example_input, torch.Tensor):
            raise TypeError(f"GraphedRollout: example_input must be a Tensor, got "
                            f"{type(example_input).__name__}")
        states = _as_tuple(example_hidden)
        if not states or not all(isinstance(s, torch.Tensor) for s in states):
            raise TypeError("GraphedRollout: example_hidden must be a Tensor or a tuple of Tensors")
        for name, t in [("example_input", example_input)] + [("example_hidden", s) for s in states]:
            if t.device.type != "cuda":
                raise ValueError(
                    f"GraphedRollout captures a CUDA graph and needs CUDA tensors, but {name} is "
                    f"on {t.device}. On the CPU, run the same loop eagerly with "
                    "fastrnn.graphs.rollout(step, x0, hidden, steps).")
        self.step, self.feedback, self.unroll = step, feedback, unroll
        self._template = example_hidden
        self._x = example_input.detach().clone()
        self._h = tuple(s.detach().clone() for s in states)
        with torch.no_grad():
            # Warm-up on a side stream (lazy initialisation, cuBLAS workspaces), as
            # torch.cuda.graph requires; it also checks the step's shapes once, eagerly.
            side = torch.cuda.Stream(device=self._x.device)
            side.wait_stream(torch.cuda.current_stream(self._x.device))
            with torch.cuda.stream(side):
                for _ in range(max(warmup, 1)):
                    self._advance()
            torch.cuda.current_stream(self._x.device).wait_stream(side)
            self._graphs = {}
            pool = None
            for n in sorted({unroll, 1}, reverse=True):  # the 1-step graph serves remainders
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    ys = torch.stack([self._advance() for _ in range(n)])
                pool = graph.pool()
                self._graphs[n] = (graph, ys)

    def _advance(self):
        """One step on the static buffers: y = step(x, h); x <- feedback(y); h <- new h."""
        y, hidden = self.step(self._x, _like(self._template, self._h))
        states = _as_tuple(hidden)
        nxt = y if self.feedback is None else self.feedback(y)
        if len(states) != len(self._h) or any(a.shape != b.shape for a, b in zip(states, self._h)):
            raise ValueError("GraphedRollout: step returned a hidden state of another form or "
                             f"shape ({[tuple(s.shape) for s in states]}) than it was given "
                             f"({[tuple(s.shape) for s in self._h]})")
        if nxt.shape != self._x.shape or nxt.dtype != self._x.dtype:
            raise ValueError(f"GraphedRollout: the fed-back prediction is {tuple(nxt.shape)} "
                             f"{nxt.dtype} but the input is {tuple(self._x.shape)} {self._x.dtype}; "
                             "pass feedback= to map one to the other")
        self._x.copy_(nxt)
        for dst, src in zip(self._h, states):
            dst.copy_(src)
        return y

    def _check(self, name, given, static):
        if not isinstance(given, torch.Tensor):
            raise TypeError(f"GraphedRollout: {name} must be a Tensor, got {type(given).__name__}")
        if given.shape != static.shape or given.dtype != static.dtype or given.device != static.device:
            raise ValueError(f"GraphedRollout: {name} is {tuple(given.shape)} {given.dtype} on "
                             f"{given.device}, but the graph was captured for {tuple(static.shape)} "
                             f"{static.dtype} on {static.device}")

    def __call__(self, x0, hidden, steps):
        """Runs `steps` steps from (x0, hidden); returns (ys [steps, *y.shape], hidden)."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"GraphedRollout: steps must be a positive int, got {steps!r}")
        states = _as_tuple(hidden)
        if len(states) != len(self._h):
            raise ValueError(f"GraphedRollout: hidden must have {len(self._h)} tensor(s), got {len(states)}")
        self._check("x0", x0, self._x)
        for i, (s, static) in enumerate(zip(states, self._h)):
            self._check(f"hidden[{i}]" if len(states) > 1 else "hidden", s, static)
        self._x.copy_(x0)
        for dst, src in zip(self._h, states):
            dst.copy_(src)
        graph, ys = self._graphs[self.unroll]
        out = ys.new_empty((steps, *ys.shape[1:]))
        done = 0
        while done < steps:
            if steps - done < self.unroll:
                graph, ys = self._graphs[1]
            graph.replay()
            n = ys.shape[0]
            out[done:done + n].copy_(ys)
            done += n
        return out, _like(self._template, tuple(h.clone() for h in self._h))
