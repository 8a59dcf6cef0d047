// tessera/third_party/stb_image_impl.hpp — compiles the vendored stb_image
// (stb_image.h beside this file: v2.30, nothings/stb commit 31c1ad3,
// public domain or MIT, unmodified) into the including translation unit with
// internal linkage, for JPEG, PNG, BMP and GIF only, decoding from memory.
//
// Vendored rather than taken from the system: Debian 12's libstb-dev is
// 2.27, whose JPEG Huffman decoder reads out of bounds on corrupt files that
// tessera's image fuzzer finds within seconds (fixed upstream in 2.28+).
// Marked a system header so that tessera's warning flags (-Wconversion,
// -Werror) do not apply to third-party code.
#pragma once
#pragma GCC system_header

#ifndef STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_IMPLEMENTATION
#endif
#define STB_IMAGE_STATIC
#define STBI_NO_STDIO
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#include "stb_image.h"
