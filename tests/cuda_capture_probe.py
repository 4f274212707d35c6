"""One CUDA-graph capture attempt per process, to narrow down the failure of
tests/test_cuda.py::test_cuda_graph_replay_equals_eager (forward and autograd.grad
captured in one graph) on a GPU. Not a test: run it once per combination, e.g.

    for p in persistent step multi_cta; do for w in fwd fwd_bwd; do
        python tests/cuda_capture_probe.py $p GRU $w global; done; done

PATH: persistent | multi_cta | step (forced as test_cuda.py's `path` fixture does);
MODE: RNN_TANH | RNN_RELU | GRU | LSTM; WHAT: fwd (the forward alone) | fwd_bwd;
ERRMODE: torch.cuda.graph's capture_error_mode (global | thread_local | relaxed).
Prints one line, CAPTURE OK or CAPTURE FAIL with the error's first line. A process of its
own per attempt because a failed capture leaves torch's CUDA generator unusable.
"""
import os
import sys

PATH_ENV = {"persistent": {}, "multi_cta": {"FASTRNN_CUDA_TILE": "2,8"},
            "step": {"FASTRNN_CUDA_PATH": "step"}}


def main(path, mode, what, errmode):
    os.environ.update(PATH_ENV[path])  # before fastrnn reads them
    import torch
    import fastrnn.ops  # noqa: F401  loads fastrnn._C
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_cuda import make_args, run

    bs, t = make_args(mode, T=12, N=5, C=7, H=33, dtype=torch.float32, requires_grad=True)
    gouts = [torch.randn_like(r) for r in run(mode, bs, t)]
    leaves = [v for v in t.values() if v is not None]

    def body():
        res = run(mode, bs, t)
        return res if what == "fwd" else torch.autograd.grad(res, leaves, gouts[:len(res)])

    side = torch.cuda.Stream()  # warm-up off the default stream, as torch.cuda.graph asks
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    label = f"{path:10} {mode:8} {what:7} {errmode}"
    try:
        with torch.cuda.graph(graph, capture_error_mode=errmode):
            body()
        graph.replay()
        torch.cuda.synchronize()
        print(f"CAPTURE OK   {label}")
    except Exception as e:  # the point is to report any failure, whatever its type
        print(f"CAPTURE FAIL {label}: {str(e).splitlines()[0][:120]}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
