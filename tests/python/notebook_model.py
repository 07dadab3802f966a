"""Builds a model the way the original notebooks do, trains it briefly so that its greedy
predictions have clear margins, and saves it as they do:

    torch.save(encoder.state_dict(), 'encoder-1.pkl')
    torch.save(decoder.state_dict(), 'decoder-1.pkl')
    pickle.dump(vocab, open('vocab.pkl', 'wb'))    # a vocabulary.Vocabulary object

Also writes inputs.pt (a plain dict with the image tensor) and expected.json (the ids that the
notebook's DecoderRNN.sample() produces for each image, and the encoder features).

usage: notebook_model.py OUTDIR [resnet18|resnet50] [tutorial]
"""
import json
import os
import pickle
import sys

import torch
import torch.nn as nn
import torchvision

out = sys.argv[1]
arch = sys.argv[2] if len(sys.argv) > 2 else "resnet18"
tutorial = len(sys.argv) > 3 and sys.argv[3] == "tutorial"
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)

# The notebook's vocabulary.py lives in a module named `vocabulary`.
with open(os.path.join(out, "vocabulary.py"), "w") as f:
    f.write(
        "class Vocabulary(object):\n"
        "    def __init__(self):\n"
        "        self.word2idx = {}\n"
        "        self.idx2word = {}\n"
        "        self.idx = 0\n"
        "        self.vocab_threshold = 5\n"
        "        self.start_word = '<start>'\n"
        "        self.end_word = '<end>'\n"
        "        self.unk_word = '<unk>'\n"
        "    def add_word(self, word):\n"
        "        if word not in self.word2idx:\n"
        "            self.word2idx[word] = self.idx\n"
        "            self.idx2word[self.idx] = word\n"
        "            self.idx += 1\n")
sys.path.insert(0, out)
import vocabulary  # noqa: E402

vocab = vocabulary.Vocabulary()
for w in ["<start>", "<end>", "<unk>", "a", "dog", "cat", "on", "the", "grass", "sofa", "red",
          "ball", "sleeping", "running", "with", "blue", "."]:
    vocab.add_word(w)
V, E, H = len(vocab.word2idx), 32, 48


class EncoderCNN(nn.Module):
    def __init__(self, embed_size):
        super().__init__()
        resnet = getattr(torchvision.models, arch)(weights=None)
        for p in resnet.parameters():
            p.requires_grad_(False)
        self.resnet = nn.Sequential(*list(resnet.children())[:-1])
        if tutorial:
            self.linear = nn.Linear(resnet.fc.in_features, embed_size)
            self.bn = nn.BatchNorm1d(embed_size, momentum=0.01)
        else:
            self.embed = nn.Linear(resnet.fc.in_features, embed_size)

    def forward(self, images):
        features = self.resnet(images)
        features = features.view(features.size(0), -1)
        if tutorial:
            return self.bn(self.linear(features))
        return self.embed(features)


class DecoderRNN(nn.Module):
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

    def sample(self, inputs, states=None, max_len=20):
        ids = []
        for _ in range(max_len):
            hiddens, states = self.lstm(inputs, states)
            outputs = self.linear(hiddens.squeeze(1))
            predicted = outputs.max(1)[1]
            ids.append(predicted.item())
            inputs = self.embed(predicted).unsqueeze(1)
        return ids


encoder = EncoderCNN(E).eval()
decoder = DecoderRNN(E, H, V, num_layers=2 if tutorial else 1)
# Two images far apart (random noise around different levels): a randomly initialised ResNet maps
# two samples of the same noise to nearly the same features, and whether 150 steps then separate
# them depended on the CPU's rounding (AVX2 against AVX-512).
images = torch.randn(2, 3, 64, 64) + torch.tensor([-1.5, 1.5]).view(2, 1, 1, 1)
captions = [["a", "dog", "sleeping", "on", "the", "sofa", "."],
            ["a", "cat", "running", "with", "a", "red", "ball", "on", "the", "grass", "."]]
T = max(len(c) for c in captions) + 2
ids = torch.full((2, T), vocab.word2idx["<end>"], dtype=torch.long)
for i, c in enumerate(captions):
    seq = ["<start>"] + c + ["<end>"]
    ids[i, :len(seq)] = torch.tensor([vocab.word2idx[w] for w in seq])
with torch.no_grad():
    features = encoder(images)
params = list(decoder.parameters()) + [p for n, p in encoder.named_parameters() if not n.startswith("resnet")]
opt = torch.optim.Adam(params, lr=1e-2)
for _ in range(150):
    opt.zero_grad()
    logits = decoder(encoder(images), ids)
    loss = nn.functional.cross_entropy(logits.reshape(-1, V), ids.reshape(-1))
    loss.backward()
    opt.step()
encoder.eval()
decoder.eval()
with torch.no_grad():
    features = encoder(images)
    sampled = [decoder.sample(features[i:i + 1].unsqueeze(1)) for i in range(2)]

torch.save(encoder.state_dict(), os.path.join(out, "encoder-1.pkl"))
torch.save(decoder.state_dict(), os.path.join(out, "decoder-1.pkl"))
with open(os.path.join(out, "vocab.pkl"), "wb") as f:
    pickle.dump(vocab, f)
torch.save({"images": images}, os.path.join(out, "inputs.pt"))
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump({"ids": sampled, "features": features.tolist(), "loss": loss.item()}, f)
