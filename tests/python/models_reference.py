"""Reference outputs for tests/test_models.cpp, from Debian's python3-torch and torchvision.

Weights and tensors are saved with torch.save and read back with imcap::load_weights.

  models_reference.py names OUT.json
  models_reference.py resnet ARCH BATCH SIZE OUTDIR
  models_reference.py notebook-encoder ARCH VARIANT OUTDIR     (VARIANT: udacity | tutorial)
  models_reference.py decoder NUM_LAYERS OUTDIR
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torchvision

ARCHS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def randomize_batch_norms(model, gen):
    """Non-trivial BN affine parameters and running statistics, so that loading them matters."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                m.num_batches_tracked.fill_(7)


class EncoderCNN(nn.Module):
    """The Udacity notebook's encoder (model.py)."""

    def __init__(self, arch, embed_size):
        super().__init__()
        resnet = getattr(torchvision.models, arch)()
        for param in resnet.parameters():
            param.requires_grad_(False)
        modules = list(resnet.children())[:-1]
        self.resnet = nn.Sequential(*modules)
        self.embed = nn.Linear(resnet.fc.in_features, embed_size)

    def forward(self, images):
        features = self.resnet(images)
        features = features.view(features.size(0), -1)
        return features, self.embed(features)


class TutorialEncoderCNN(nn.Module):
    """The PyTorch tutorial's encoder (yunjey/pytorch-tutorial image_captioning/model.py)."""

    def __init__(self, arch, embed_size):
        super().__init__()
        resnet = getattr(torchvision.models, arch)()
        modules = list(resnet.children())[:-1]
        self.resnet = nn.Sequential(*modules)
        self.linear = nn.Linear(resnet.fc.in_features, embed_size)
        self.bn = nn.BatchNorm1d(embed_size, momentum=0.01)

    def forward(self, images):
        features = self.resnet(images)
        features = features.reshape(features.size(0), -1)
        return features, self.bn(self.linear(features))


class DecoderRNN(nn.Module):
    """The Udacity notebook's decoder (model.py): the image feature is the input of step 0."""

    def __init__(self, embed_size, hidden_size, vocab_size, num_layers=1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, vocab_size)

    def forward(self, features, captions):
        embeddings = self.embed(captions[:, :-1])
        inputs = torch.cat((features.unsqueeze(1), embeddings), 1)
        hiddens, _ = self.lstm(inputs)
        return self.linear(hiddens)

    def sample(self, inputs, states=None, max_len=20, end_id=None):
        output = []
        for _ in range(max_len):
            hiddens, states = self.lstm(inputs, states)
            outputs = self.linear(hiddens.squeeze(1))
            predicted = outputs.max(1)[1]
            output.append(predicted.item())
            if end_id is not None and predicted.item() == end_id:
                break
            inputs = self.embed(predicted).unsqueeze(1)
        return output


def save(obj, outdir, name):
    torch.save(obj, os.path.join(outdir, name))


def cmd_names(out):
    result = {}
    for arch in ARCHS:
        sd = getattr(torchvision.models, arch)().state_dict()
        result[arch] = [[k, list(v.shape)] for k, v in sd.items()]
    result["notebook_udacity_resnet50"] = list(EncoderCNN("resnet50", 256).state_dict().keys())
    result["notebook_tutorial_resnet18"] = list(
        TutorialEncoderCNN("resnet18", 256).state_dict().keys())
    with open(out, "w") as f:
        json.dump(result, f)


def cmd_resnet(arch, batch, size, outdir):
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    model = getattr(torchvision.models, arch)()
    randomize_batch_norms(model, gen)
    model.eval()
    images = torch.randn(batch, 3, size, size, generator=gen)
    with torch.no_grad():
        x = images
        for name, child in model.named_children():
            if name == "fc":
                break
            x = child(x)
        pooled = torch.flatten(x, 1)
        logits = model(images)
    save(dict(model.state_dict()), outdir, "weights.pt")
    save({"images": images, "pooled": pooled, "logits": logits}, outdir, "data.pt")


def cmd_notebook_encoder(arch, variant, outdir):
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(4)
    cls = EncoderCNN if variant == "udacity" else TutorialEncoderCNN
    model = cls(arch, 24)
    randomize_batch_norms(model, gen)
    model.eval()
    images = torch.randn(2, 3, 128, 160, generator=gen)
    with torch.no_grad():
        pooled, embedded = model(images)
    save(dict(model.state_dict()), outdir, "weights.pt")
    save({"images": images, "pooled": pooled, "embedded": embedded}, outdir, "data.pt")


def cmd_decoder(num_layers, outdir):
    torch.manual_seed(5)
    gen = torch.Generator().manual_seed(6)
    vocab, embed, hidden, batch, steps = 50, 16, 32, 3, 7
    model = DecoderRNN(embed, hidden, vocab, num_layers)
    with torch.no_grad():
        model.linear.weight.mul_(4.0)  # wider margins between the greedy choices
    model.eval()
    features = torch.randn(batch, embed, generator=gen)
    captions = torch.randint(0, vocab, (batch, steps), generator=gen)
    with torch.no_grad():
        logits = model(features, captions)
        loss = nn.CrossEntropyLoss()(logits.reshape(-1, vocab), captions.reshape(-1))
        greedy = [model.sample(features[b:b + 1].unsqueeze(1), max_len=20) for b in range(batch)]
        end_id = greedy[0][3]
        stopped = [model.sample(features[b:b + 1].unsqueeze(1), max_len=20, end_id=end_id)
                   for b in range(batch)]
    width = max(len(s) for s in stopped)
    stopped = [s + [end_id] * (width - len(s)) for s in stopped]
    save(dict(model.state_dict()), outdir, "weights.pt")
    save({"features": features, "captions": captions, "logits": logits, "loss": loss,
          "greedy": torch.tensor(greedy), "end_id": torch.tensor(end_id),
          "stopped": torch.tensor(stopped)}, outdir, "data.pt")


def main(argv):
    cmd = argv[1]
    if cmd == "names":
        cmd_names(argv[2])
    elif cmd == "resnet":
        cmd_resnet(argv[2], int(argv[3]), int(argv[4]), argv[5])
    elif cmd == "notebook-encoder":
        cmd_notebook_encoder(argv[2], argv[3], argv[4])
    elif cmd == "decoder":
        cmd_decoder(int(argv[2]), argv[3])
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
