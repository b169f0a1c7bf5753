"""The Python peer's side of 'flarego bench model': PneumoniaModel on random
224x224 batches, timed after two warm-up steps.

  bench_model.py train BATCH STEPS    Adam + CrossEntropyLoss steps
  bench_model.py infer BATCH STEPS    eval-mode forward passes under no_grad
  bench_model.py ort BATCH STEPS      the eval-mode model exported to ONNX, run by
                                      onnxruntime's CPU provider (all optimisations on)
An optional THREADS argument sets torch's (or onnxruntime's) intra-op threads.
Prints {"seconds": ..., "images": ...}.
"""
import json
import sys
import time

import torch
import torch.nn as nn


class PneumoniaModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=2)
        self.conv2 = nn.Conv2d(12, 20, kernel_size=3, stride=1, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(20, 32, kernel_size=3, stride=1, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(32 * 112 * 112, 2)

    def forward(self, x):
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.conv2(x))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(x.view(x.size(0), -1))


def main():
    op, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if len(sys.argv) > 4:
        torch.set_num_threads(int(sys.argv[4]))
    torch.manual_seed(0)
    m = PneumoniaModel()
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 2, (batch,))
    if op == "train":
        opt = torch.optim.Adam(m.parameters(), lr=0.001)
        loss_fn = nn.CrossEntropyLoss()
        m.train()

        def step():
            opt.zero_grad()
            loss_fn(m(x), y).backward()
            opt.step()
    elif op == "ort":
        import io
        import onnxruntime as ort
        m.eval()
        buf = io.BytesIO()
        torch.onnx.export(m, x, buf, input_names=["x"], output_names=["logits"], opset_version=17)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if len(sys.argv) > 4:
            so.intra_op_num_threads = int(sys.argv[4])
        sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        feed = {"x": x.numpy()}

        def step():
            sess.run(None, feed)
    else:
        m.eval()

        def step():
            with torch.no_grad():
                m(x)
    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    print(json.dumps({"seconds": dt, "images": batch * steps}))


if __name__ == "__main__":
    main()
