"""Reference for `imcap features`: random 256x256 PNGs, a COCO file naming them, random-init
torchvision ResNet weights saved as model.state_dict(), and the pooled features torchvision's eval
transform (Resize 256, CenterCrop 224, ToTensor, Normalize) and model give for each image.

usage: features_reference.py OUTDIR ARCH
"""
import json
import os
import sys

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms

out, arch = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "images"), exist_ok=True)
torch.manual_seed(1)
rng = np.random.default_rng(1)
model = getattr(torchvision.models, arch)(weights=None).eval()
torch.save(model.state_dict(), os.path.join(out, "weights.pth"))
tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                         transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
images, anns, feats = [], [], []
for i in range(3):
    name = f"im{i}.png"
    # smooth random images, so that features are not dominated by noise
    small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((256, 256), Image.BILINEAR)
    img.save(os.path.join(out, "images", name))
    images.append({"id": 10 + i, "file_name": name})
    anns.append({"id": i, "image_id": 10 + i, "caption": "a picture"})
    x = tf(Image.open(os.path.join(out, "images", name)).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        f = torch.nn.Sequential(*list(model.children())[:-1])(x).flatten(1)
    feats.append(f[0])
with open(os.path.join(out, "ann.json"), "w") as f:
    json.dump({"images": images, "annotations": anns}, f)
torch.save({"features": torch.stack(feats)}, os.path.join(out, "expected.pt"))
