"""Reference: the same CIFAR-10 model trained in PyTorch on the CPU (Keras initialisation and Adam settings).

Used to put npcnn's end-to-end wall time and accuracy side by side with PyTorch's on the same machine:

    python benchmarks/torch_cifar10_fit.py --data-dir DIR --epochs 10 --threads 2 [--limit N]
    python benchmarks/torch_cifar10_fit.py --data-dir DIR --model deep --threads 2   # 30 epochs of batch 64

``--model deep`` trains npcnn.models.cifar10_deep's network (benchmarks/common.py's torch_deep_model:
BatchNorm with Keras's momentum and epsilon, Keras's initialisation) as ``--model deep`` of the example
does: AdamW (eps 1e-7, decoupled weight decay ``--weight-decay`` 0.05; 0 for plain Adam) with the
learning rate decayed per step from 1e-3 to 0 along a cosine over the whole run, and the same
augmentation in training (a random horizontal flip, then a random translation of up to 10 % of the height
and width, bilinear, reflected at the borders: Keras's RandomFlip('horizontal') and
RandomTranslation(0.1, 0.1)), drawn with torch's generator.

DIR holds cifar-10-batches-py/ (as npcnn.datasets.cifar10.load_data reads it). Needs torch
(`pip install torch==2.13.0`). Prints one line per epoch (time, loss, accuracy, val accuracy) and
the total wall time of training.
"""

import argparse
import math
import time


def main(argv=None):
    import torch

    from npcnn.datasets import cifar10

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", choices=("seed", "deep"), default="seed")
    ap.add_argument("--epochs", type=int, default=None, help="default 10 (seed) or 30 (deep)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 32 (seed) or 64 (deep)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weight-decay", type=float, default=None,
                    help="--model deep: AdamW's decoupled decay (p *= 1 - lr * wd; default 0.05, as the example's); "
                    "0: plain Adam")
    args = ap.parse_args(argv)
    deep = args.model == "deep"
    if args.weight_decay is not None and not deep:
        ap.error("--weight-decay applies to --model deep only")
    if deep and args.weight_decay is None:
        args.weight_decay = 0.05
    args.epochs = args.epochs or (30 if deep else 10)
    args.batch_size = args.batch_size or (64 if deep else 32)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    (xtr, ytr), (xte, yte) = cifar10.load_data(args.data_dir)
    if args.limit:
        xtr, ytr, xte, yte = xtr[:args.limit], ytr[:args.limit], xte[:args.limit], yte[:args.limit]
    xtr = torch.tensor(xtr, dtype=torch.float32).div_(255).permute(0, 3, 1, 2).contiguous()
    xte = torch.tensor(xte, dtype=torch.float32).div_(255).permute(0, 3, 1, 2).contiguous()
    ytr = torch.tensor(ytr.reshape(-1), dtype=torch.long)
    yte = torch.tensor(yte.reshape(-1), dtype=torch.long)

    nn = torch.nn

    class Keras(nn.Sequential):
        def __init__(self):
            super().__init__(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(1024, 64), nn.ReLU(), nn.Linear(64, 10))
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(m.weight)  # Keras's glorot_uniform
                    nn.init.zeros_(m.bias)

    n = len(xtr)
    sched = augment = None
    if deep:
        from common import torch_deep_model

        model = torch_deep_model()
        torch.manual_seed(args.seed)
        if not args.weight_decay:
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
        else:  # decays every parameter, as Keras's AdamW and npcnn's by default
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7,
                                    weight_decay=args.weight_decay)
        decay = args.epochs * math.ceil(n / args.batch_size)  # npcnn's CosineDecay(1e-3, decay): 0 at the end
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, decay) / decay)))
        F = torch.nn.functional

        def augment(xb):
            b, _, h, w = xb.shape
            flip = torch.rand(b) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            shift = (torch.rand(b, 2) * 2 - 1) * 0.1 * 2  # up to 10 % of the size, in [-1, 1] coordinates
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0] = theta[:, 1, 1] = 1
            theta[:, :, 2] = shift
            grid = F.affine_grid(theta, (b, 3, h, w), align_corners=False)
            return F.grid_sample(xb, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    else:
        model = Keras()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    total = 0.0
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        seen = loss_sum = correct = 0
        for i in range(0, n, args.batch_size):
            idx = perm[i:i + args.batch_size]
            xb, yb = xtr[idx], ytr[idx]
            if augment is not None:
                xb = augment(xb)
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            seen += len(idx)
            loss_sum += loss.item() * len(idx)
            correct += (out.argmax(1) == yb).sum().item()
        dt = time.perf_counter() - t0
        total += dt
        model.eval()
        with torch.no_grad():
            val = sum((model(xte[i:i + 256]).argmax(1) == yte[i:i + 256]).sum().item()
                      for i in range(0, len(xte), 256)) / len(xte)
        print(f"epoch {epoch + 1}/{args.epochs}: {dt:.1f}s ({n / dt:.0f} img/s) loss {loss_sum / seen:.4f} "
              f"accuracy {correct / seen:.4f} val_accuracy {val:.4f}", flush=True)
    print(f"PyTorch {torch.__version__}, {args.model} model, {args.threads} threads: training wall time {total:.1f}s, "
          f"final test accuracy {val:.4f}")


if __name__ == "__main__":
    main()
