"""Reference outputs for tests/test_models.cpp, from Debian's python3-torch and torchvision.

Weights and tensors are saved with torch.save and read back with imcap::load_weights.

  models_reference.py names OUT.json
  models_reference.py resnet ARCH BATCH SIZE OUTDIR
  models_reference.py notebook-encoder ARCH VARIANT OUTDIR     (VARIANT: udacity | tutorial)
  models_reference.py decoder NUM_LAYERS OUTDIR
  models_reference.py attention OUTDIR
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


class SoftAttention(nn.Module):
    """Additive attention over a grid, as in sgrvinod's tutorial (the attribute names matter)."""

    def __init__(self, encoder_dim, decoder_dim, attention_dim):
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, grid, h):
        scores = self.full_att(torch.relu(self.encoder_att(grid) + self.decoder_att(h)[:, None]))
        alpha = torch.softmax(scores.squeeze(2), dim=1)
        return (grid * alpha[:, :, None]).sum(dim=1), alpha


class AttentionDecoderRef(nn.Module):
    """Show, Attend and Tell's decoder with sgrvinod's DecoderWithAttention names and loop:
    captions sorted by length, the batch shrinking as captions end."""

    def __init__(self, attention_dim, embed_dim, decoder_dim, vocab_size, encoder_dim):
        super().__init__()
        self.attention = SoftAttention(encoder_dim, decoder_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(p=0.5)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)
        self.fc = nn.Linear(decoder_dim, vocab_size)
        self.vocab_size = vocab_size

    def begin(self, grid):
        mean = grid.mean(dim=1)
        return self.init_h(mean), self.init_c(mean)

    def one_step(self, grid, words, h, c):
        attended, alpha = self.attention(grid, h)
        attended = torch.sigmoid(self.f_beta(h)) * attended
        h, c = self.decode_step(torch.cat([words, attended], dim=1), (h, c))
        return self.fc(self.dropout(h)), alpha, h, c

    def forward(self, grid, captions, lengths):
        order = lengths.argsort(descending=True)
        grid, captions, lengths = grid[order], captions[order], lengths[order]
        words = self.embedding(captions)
        h, c = self.begin(grid)
        steps = (lengths - 1).tolist()
        batch, pixels = grid.size(0), grid.size(1)
        logits = torch.zeros(batch, max(steps), self.vocab_size)
        alphas = torch.zeros(batch, max(steps), pixels)
        for t in range(max(steps)):
            n = sum(s > t for s in steps)
            out, alpha, h, c = self.one_step(grid[:n], words[:n, t], h[:n], c[:n])
            logits[:n, t] = out
            alphas[:n, t] = alpha
        back = order.argsort()
        return logits[back], alphas[back]

    def greedy(self, grid, start_id, max_len):
        h, c = self.begin(grid)
        word = torch.full((grid.size(0),), start_id, dtype=torch.long)
        out = []
        for _ in range(max_len):
            logits, _, h, c = self.one_step(grid, self.embedding(word), h, c)
            word = logits.argmax(1)
            out.append(word)
        return torch.stack(out, 1)


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


def cmd_attention(outdir):
    torch.manual_seed(7)
    gen = torch.Generator().manual_seed(8)
    vocab, embed, hidden, att, channels, pixels, batch, width = 40, 12, 16, 10, 24, 9, 4, 7
    model = AttentionDecoderRef(att, embed, hidden, vocab, channels)
    with torch.no_grad():
        model.fc.weight.mul_(8.0)  # wider margins between the greedy choices
        model.attention.full_att.weight.mul_(4.0)  # peaked attention
    model.eval()
    grid = torch.randn(batch, pixels, channels, generator=gen)
    captions = torch.randint(2, vocab, (batch, width), generator=gen)
    captions[:, 0] = 1  # <start>
    lengths = torch.tensor([5, 7, 2, 4])
    with torch.no_grad():
        logits, alphas = model(grid, captions, lengths)
        targets = captions[:, 1:].clone()
        valid = torch.arange(width - 1)[None] < (lengths - 1)[:, None]
        ce = nn.functional.cross_entropy(logits[valid], targets[valid])
        penalty = ((1.0 - alphas.sum(dim=1)) ** 2).mean()
        greedy = model.greedy(grid, 1, 12)
    save(dict(model.state_dict()), outdir, "weights.pt")
    save({"grid": grid, "captions": captions, "lengths": lengths, "logits": logits,
          "alphas": alphas, "cross_entropy": ce, "penalty": penalty, "greedy": greedy},
         outdir, "data.pt")


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
    elif cmd == "attention":
        cmd_attention(argv[2])
    else:
        raise SystemExit("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
