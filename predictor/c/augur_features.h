/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * The LinnOS-family feature encoders (predictor/src/features.rs) in C, for
 * the kernel module's callers: a replica's (or a device-mapper leg's)
 * history in, the integer path's input digits out. The caller owns the
 * history and keeps it up to date; these functions only read it.
 */
#ifndef AUGUR_FEATURES_H
#define AUGUR_FEATURES_H

#include "augur_predict.h"

#define AUGUR_HISTORY_LEN 4
#define AUGUR_WRITE_HISTORY_LEN 4

/* One completed read. */
struct augur_completed {
	u32 latency_us;
	u32 pending_pages_at_issue; /* pending I/O in 4 KiB pages at its issue */
	u32 pending_ios_at_issue;
	u32 size_bytes;
};

/* A replica's state when a read is routed (HistorySnapshot in Rust). */
struct augur_history {
	u32 pending_pages; /* pending I/O now, 4 KiB pages (rounded up per I/O) */
	u32 pending_ios;
	struct augur_completed recent[AUGUR_HISTORY_LEN]; /* newest first */
	u32 len; /* real entries of recent */
	u32 oldest_pending_us; /* linnos-ext: age of the oldest pending I/O */
	u32 read_max_us; /* linnos-ext: worst of the last ~64 read latencies */
	u32 write_recent_us[AUGUR_WRITE_HISTORY_LEN]; /* linnos-write, newest first */
	u32 write_len;
};

/*
 * Writes the model input of feature set fs (AUGUR_FS_LINNOS, _LINNOS_EXT or
 * _LINNOS_WRITE) for history h into x and returns how many values (31, 39
 * or 47); returns 0 for a feature set it does not encode (heimdall needs
 * its scaler).
 */
u32 augur_encode(u32 fs, const struct augur_history *h, s32 *x);

#endif /* AUGUR_FEATURES_H */
