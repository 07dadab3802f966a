// Umbrella header: everything in imcap's public API.
#pragma once

#include "imcap/coco_dataset.hpp"
#include "imcap/data_loader.hpp"
#include "imcap/error.hpp"
#include "imcap/image.hpp"
#include "imcap/synthetic.hpp"
#include "imcap/version.hpp"
#include "imcap/vocabulary.hpp"
#include "imcap/image.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/metrics.hpp"
#include "imcap/encoder.hpp"
#include "imcap/decoder.hpp"
#include "imcap/pickle.hpp"
#include "imcap/weights.hpp"
#include "imcap/safetensors.hpp"
#include "imcap/vocab_pickle.hpp"
