"""Fine-tune a MobileNet on your own torch Dataset with edgetl's Python API, save the run, export it for a device.

    python examples/finetune_your_dataset.py                         # a small built-in stand-in data set
    python examples/finetune_your_dataset.py --data ~/flowers        # an ImageFolder of yours
    python examples/finetune_your_dataset.py --format onnx --epochs 5 --out runs/flowers

Everything here is plain PyTorch plus four edgetl objects: a model, a policy, an optimizer spec and a trainer.
Any Dataset (or DataLoader) yielding (image tensor, label) works; ``classes`` on it names the classes.
"""

import argparse

import torch
from torch.utils.data import Dataset, random_split
from torchvision import datasets

import edgetl
from edgetl.data import Patterns, eval_transform, train_transform


class MyDataset(Dataset):
    """Stands for the user's own data: 300 procedurally drawn images of 5 texture classes."""

    classes = Patterns.classes

    def __init__(self, transform, seed=0):
        self.images = Patterns(300, seed=seed)
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image, label = self.images[i]
        return self.transform(image), label


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="an ImageFolder (DIR/<class>/*.jpg); default: a built-in stand-in")
    ap.add_argument("--model", default="mobilenet_v3_small")
    ap.add_argument("--k", type=int, default=5, help="MobileTL trains the top K inverted-residual blocks")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--weights", default=None, help="imagenet, a .pth file, or a run directory (default: random)")
    ap.add_argument("--format", default="tflite", choices=["tflite", "onnx"])
    ap.add_argument("--out", default="runs/example")
    args = ap.parse_args()

    torch.manual_seed(0)
    if args.data:
        train = datasets.ImageFolder(args.data, transform=train_transform(args.resolution))
        val = datasets.ImageFolder(args.data, transform=eval_transform(args.resolution))
        n_val = max(1, len(train) // 10)
        order = torch.randperm(len(train)).tolist()
        train_data, val_data = torch.utils.data.Subset(train, order[n_val:]), torch.utils.data.Subset(val, order[:n_val])
        classes = train.classes
    else:
        full = MyDataset(eval_transform(args.resolution))
        train_data, val_data = random_split(full, [240, 60], generator=torch.Generator().manual_seed(0))
        classes = MyDataset.classes

    model = edgetl.create_model(args.model, num_classes=len(classes), weights=args.weights)
    if args.weights is None:  # random frozen layers need the data's batch-norm statistics
        edgetl.calibrate_batchnorm(model, torch.utils.data.DataLoader(train_data, batch_size=32, shuffle=True))
    policy = edgetl.MobileTL(k=args.k)
    edgetl.apply_policy(model, policy)
    trainer = edgetl.Trainer(model, train_data=train_data, val_data=val_data, class_names=classes,
                             optimizer=edgetl.OptimizerSpec("adamw", lr=1e-3), epochs=args.epochs, batch_size=16,
                             callbacks=[edgetl.ProgressBar()])
    result = trainer.fit()
    run = edgetl.Run.save(model, policy, result, args.out)
    print(f"validation accuracy {result.history[-1]['val_acc']:.3f}; run saved in {run.path}")

    artifacts = edgetl.export(run, args.format, out=f"{args.out}/{args.format}", batch_size=8)
    print(artifacts.validation)
    print(f"{args.format} artifacts in {artifacts.out}: {', '.join(p.name for p in artifacts.files)}")


if __name__ == "__main__":
    main()
