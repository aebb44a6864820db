/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * Augur's model file (format v1, predictor/src/model.rs) read into a
 * struct augur_model, with no allocation of its own: augur_model_check()
 * validates a whole file and says how many bytes the model needs;
 * augur_model_build() lays it out in memory the caller allocated (one
 * block: kvmalloc in the kernel, malloc in userspace). Builds in the
 * kernel and in userspace from this one file.
 *
 * What is checked: magic, version, feature set, every count and size
 * before it is used, shape chaining, activations, exponents and shifts,
 * the integer path's bounds (|Wq| <= 32767, layer-1 |bq| <= 2^30, later
 * |bq| <= 2^40), the metadata's limits, no trailing bytes, the CRC-32.
 * The f32 copies of the weights are skipped (the daemon's loader checks
 * them against the integers; the kernel uses no floating point).
 */
#ifndef AUGUR_MODEL_H
#define AUGUR_MODEL_H

#include "augur_predict.h"

#ifndef __KERNEL__
#include <stddef.h>
#endif

/* The largest model file accepted (a 47-1024x7-2 model is about 22 MiB;
 * the shipped architectures are under 1 MiB). */
#define AUGUR_MODEL_MAX_BYTES (32u << 20)

/*
 * Validates the model file buf[0..len). Returns 0 and sets *need (bytes to
 * hand augur_model_build) or a negative errno with *why set to a static
 * message naming the problem:
 *   -EINVAL           malformed (magic, truncation, shapes, trailing bytes)
 *   -EOPNOTSUPP       a format version or feature set this code cannot read
 *   -E2BIG            a count above its limit
 *   -ERANGE           a quantized value outside the integer path's bounds
 *   -EBADMSG          the checksum does not match
 */
int augur_model_check(const u8 *buf, size_t len, size_t *need,
		      const char **why);

/* The name of an errno augur_model_check returns (negative), e.g. "EINVAL". */
const char *augur_model_errno_name(int err);

/* Lays out a file that augur_model_check accepted in mem (need bytes,
 * 8-byte aligned) and returns the model inside it. */
struct augur_model *augur_model_build(const u8 *buf, size_t len, void *mem);

#endif /* AUGUR_MODEL_H */
