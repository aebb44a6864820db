// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * LinnOS-family feature encoders, as predictor/src/features.rs documents
 * them: pending counts capped at 999 as 3 decimal digits, latencies capped
 * at 9999 as 4, most significant first; history entries past len are
 * zero. Divisions are by the constant 10 on u32 values (no 64-bit division,
 * so no libgcc helper on 32-bit kernels).
 */
#include "augur_features.h"

#define PENDING_CAP 999u
#define LATENCY_CAP 9999u

static inline u32 cap(u32 v, u32 c)
{
	return v < c ? v : c;
}

/* v as n decimal digits into x, most significant first. */
static void digits(u32 v, s32 *x, u32 n)
{
	while (n > 0) {
		x[--n] = (s32)(v % 10);
		v /= 10;
	}
}

u32 augur_encode(u32 fs, const struct augur_history *h, s32 *x)
{
	u32 n = h->len < AUGUR_HISTORY_LEN ? h->len : AUGUR_HISTORY_LEN;
	u32 wn = h->write_len < AUGUR_WRITE_HISTORY_LEN ? h->write_len :
							   AUGUR_WRITE_HISTORY_LEN;
	u32 j, newest = 0, least = 0;

	if (fs != AUGUR_FS_LINNOS && fs != AUGUR_FS_LINNOS_EXT &&
	    fs != AUGUR_FS_LINNOS_WRITE)
		return 0;
	digits(cap(h->pending_pages, PENDING_CAP), x, 3);
	for (j = 0; j < AUGUR_HISTORY_LEN; j++) {
		u32 p = j < n ? cap(h->recent[j].pending_pages_at_issue, PENDING_CAP) : 0;
		u32 l = j < n ? cap(h->recent[j].latency_us, LATENCY_CAP) : 0;

		digits(p, x + 3 + 3 * j, 3);
		digits(l, x + 15 + 4 * j, 4);
	}
	if (fs == AUGUR_FS_LINNOS)
		return 31;
	digits(cap(h->oldest_pending_us, LATENCY_CAP), x + 31, 4);
	digits(cap(h->read_max_us, LATENCY_CAP), x + 35, 4);
	if (fs == AUGUR_FS_LINNOS_EXT)
		return 39;
	if (wn > 0) {
		newest = h->write_recent_us[0];
		least = newest;
		for (j = 1; j < wn; j++)
			if (h->write_recent_us[j] < least)
				least = h->write_recent_us[j];
	}
	digits(cap(newest, LATENCY_CAP), x + 39, 4);
	digits(cap(least, LATENCY_CAP), x + 43, 4);
	return 47;
}
