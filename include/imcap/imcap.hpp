// Umbrella header: everything in imcap's public API.
#pragma once

#include "imcap/error.hpp"
#include "imcap/version.hpp"
#include "imcap/vocabulary.hpp"
#include "imcap/image.hpp"
#include "imcap/coco_dataset.hpp"
#include "imcap/search.hpp"
