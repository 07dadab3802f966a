"""Builds a Show, Attend and Tell model the way sgrvinod's a-PyTorch-Tutorial-to-Image-Captioning
does (models.py: Encoder = a torchvision ResNet without its pool and fc, then
AdaptiveAvgPool2d((S, S)); DecoderWithAttention), with random weights, one Adam step, and saves
it as its train.py does: the whole modules pickled in a checkpoint dict,

    torch.save({'epoch': ..., 'encoder': encoder, 'decoder': decoder,
                'encoder_optimizer': None, 'decoder_optimizer': adam, ...}, 'checkpoint.pth.tar')

in torch.save's zip format and its legacy one, plus the word map (WORDMAP.json: word -> id,
<pad> = 0) and, for given images and captions, the teacher-forced logits and the greedy ids.

usage: show_attend_tell_checkpoint.py OUTDIR [S]
"""
import json
import os
import sys

import torch
import torch.nn as nn

out = sys.argv[1]
grid = int(sys.argv[2]) if len(sys.argv) > 2 else 3
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)

# The project's classes live in a module named `models`, as in the project.
with open(os.path.join(out, "models.py"), "w") as f:
    f.write(
        "import torch\n"
        "import torch.nn as nn\n"
        "import torchvision\n"
        "from models_reference import AttentionDecoderRef\n\n"
        "class Encoder(nn.Module):\n"
        "    def __init__(self, encoded_image_size):\n"
        "        super().__init__()\n"
        "        resnet = torchvision.models.resnet18(weights=None)\n"
        "        self.resnet = nn.Sequential(*list(resnet.children())[:-2])\n"
        "        self.adaptive_pool = nn.AdaptiveAvgPool2d((encoded_image_size, encoded_image_size))\n"
        "    def forward(self, images):\n"
        "        out = self.adaptive_pool(self.resnet(images))\n"
        "        return out.permute(0, 2, 3, 1)\n\n"
        "class DecoderWithAttention(AttentionDecoderRef):\n"
        "    pass\n")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, out)
import models  # noqa: E402

words = ["a", "dog", "cat", "on", "the", "grass", "sofa", "red", "ball", "."]
word_map = {w: i + 1 for i, w in enumerate(words)}
word_map["<unk>"] = len(word_map) + 1
word_map["<start>"] = len(word_map) + 1
word_map["<end>"] = len(word_map) + 1
word_map["<pad>"] = 0
V = len(word_map)

encoder = models.Encoder(grid)
decoder = models.DecoderWithAttention(attention_dim=24, embed_dim=16, decoder_dim=32,
                                      vocab_size=V, encoder_dim=512)
for m in encoder.modules():  # batch norms with statistics of their own
    if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
images = torch.randn(2, 3, 64, 64)
caps = torch.tensor([[word_map["<start>"], 1, 2, 4, 5, 6, 10, word_map["<end>"]],
                     [word_map["<start>"], 1, 3, 4, 5, 7, word_map["<end>"], 0]])
lengths = torch.tensor([8, 7])
adam = torch.optim.Adam(decoder.parameters(), lr=1e-3)
grids = encoder(images).reshape(2, -1, 512)
logits, alphas = decoder(grids.detach(), caps, lengths)
nn.functional.cross_entropy(logits.reshape(-1, V), caps[:, 1:].reshape(-1)).backward()
adam.step()
encoder.eval()
decoder.eval()
with torch.no_grad():
    grids = encoder(images).reshape(2, -1, 512)
    logits, alphas = decoder(grids, caps, lengths)
    ids = decoder.greedy(grids, word_map["<start>"], 12)
checkpoint = {"epoch": 3, "epochs_since_improvement": 0, "bleu-4": 0.25, "encoder": encoder,
              "decoder": decoder, "encoder_optimizer": None, "decoder_optimizer": adam}
torch.save(checkpoint, os.path.join(out, "checkpoint.pth.tar"))
torch.save(checkpoint, os.path.join(out, "checkpoint-legacy.pth.tar"),
           _use_new_zipfile_serialization=False)
with open(os.path.join(out, "WORDMAP.json"), "w") as f:
    json.dump(word_map, f)
torch.save({"images": images, "captions": caps, "lengths": lengths, "logits": logits,
            "alphas": alphas}, os.path.join(out, "expected.pt"))
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump({"ids": ids.tolist()}, f)
