/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Augur's predictor for other kernel code. Hold one model for one request:
 *
 *	const struct augur_model *m = augur_model_get();
 *	if (m)
 *		slow = augur_is_slow(augur_predict(m, x, out));
 *	augur_model_put();
 *
 * augur_encode() (augur_features.h) turns the caller's per-device history
 * into x for the LinnOS feature sets.
 *
 * Between get and put the caller is in an RCU read section: it must not
 * sleep, and the model it holds stays whole even if a new one is loaded
 * meanwhile (the old one is freed after a grace period).
 */
#ifndef AUGUR_H
#define AUGUR_H

#include "augur_features.h"
#include "augur_predict.h"

const struct augur_model *augur_model_get(void);
void augur_model_put(void);
s64 augur_predict(const struct augur_model *m, const s32 *x, s64 *out);
void augur_predict_batch(const struct augur_model *m, const s32 *xs, u32 n,
			 s64 *scores);

#endif /* AUGUR_H */
