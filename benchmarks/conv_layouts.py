"""Single convolutions of the small preset, forward + backward: oneDNN (default) against
PyTorch native kernels and channels-last, median of 5; GFLOP/s counts 3x the forward work.

    python benchmarks/conv_layouts.py
"""
import time, torch, numpy as np
torch.manual_seed(0)
def bench(fn, n=5):
    fn(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
    return np.median(ts)
for cin, cout, k, h, w in [(32,32,5,116,320),(16,32,5,116,320),(3,16,5,232,640),(32,256,7,29,80)]:
    x = torch.randn(1,cin,h,w, requires_grad=True); conv = torch.nn.Conv2d(cin,cout,k,padding=k//2,bias=False)
    g = torch.randn(1,cout,h,w)
    flops = 2*cin*cout*k*k*h*w/1e9
    def fb():
        y = conv(x); y.backward(g)
    def fwd():
        with torch.no_grad(): conv(x)
    r = {}
    r["mkldnn fwd"] = bench(fwd); r["mkldnn f+b"] = bench(fb)
    torch.backends.mkldnn.enabled=False
    r["native fwd"] = bench(fwd); r["native f+b"] = bench(fb)
    torch.backends.mkldnn.enabled=True
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_(); convc = conv.to(memory_format=torch.channels_last); gc = g.to(memory_format=torch.channels_last)
    def fbc():
        y = convc(xc); y.backward(gc)
    r["cl f+b"] = bench(fbc)
    conv = conv.to(memory_format=torch.contiguous_format)
    print(f"{cin}->{cout} k{k} {h}x{w} {flops:.2f} GF:", "  ".join(f"{k} {v*1e3:.1f}ms ({(flops*(3 if 'f+b' in k else 1))/v:.0f} GF/s)" for k,v in r.items()), flush=True)
