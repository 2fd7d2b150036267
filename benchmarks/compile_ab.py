"""torch.compile against eager for one SGD step per image of the two-stage network: same
initial weights, the first losses side by side, then interleaved timing (median of 5 x 3 steps).

    python benchmarks/compile_ab.py small 3x232x640
"""
import sys, time, torch, numpy as np
from defectkit.models import create_model
preset = sys.argv[1] if len(sys.argv) > 1 else "small"
c, h, w = (int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "3x232x640").split("x"))
def make():
    torch.manual_seed(0)
    m = create_model("segdec", preset, in_channels=c)
    return m, torch.optim.SGD(m.parameters(), lr=0.01)
x = torch.rand(1, c, h, w); y = torch.ones(1); t = torch.rand(1, 1, h // 8, w // 8)
def stepper(model, opt):
    def step():
        logit, seg = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit.flatten(), y) + torch.nn.functional.binary_cross_entropy_with_logits(seg, t)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return loss.item()
    return step
e_model, e_opt = make(); eager = stepper(e_model, e_opt)
c_model, c_opt = make(); c_model = torch.compile(c_model); comp = stepper(c_model, c_opt)
t0 = time.perf_counter(); la = [eager() for _ in range(3)]; print("eager first 3", time.perf_counter() - t0)
t0 = time.perf_counter(); lb = [comp() for _ in range(3)]; print("compile first 3 (incl compile)", time.perf_counter() - t0)
print("loss eager", la, "compiled", lb)
te, tc = [], []
for r in range(5):
    t0 = time.perf_counter(); [eager() for _ in range(3)]; te.append((time.perf_counter() - t0) / 3)
    t0 = time.perf_counter(); [comp() for _ in range(3)]; tc.append((time.perf_counter() - t0) / 3)
print("eager s/step median", np.median(te), "compiled", np.median(tc), "ratio", np.median(te) / np.median(tc))
