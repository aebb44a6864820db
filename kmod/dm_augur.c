// SPDX-License-Identifier: GPL-2.0
/*
 * dm-augur: a device-mapper mirror over 2 to 8 legs that routes each read
 * with Augur's predictor (augur.ko), the kernel twin of the daemon.
 *
 *	dmsetup create NAME --table "0 SECTORS augur baseline|linnos LEG..."
 *
 * Writes go to every live leg at once (dm-io) and complete when all have;
 * flushes, discards and write-zeroes are sent to every leg. A read goes to
 * its primary leg (128 KiB stripes in turn, as the daemon's); under
 * `linnos` the loaded model scores the primary from its history and,
 * predicted slow, the next live leg, and so on; slow everywhere, the
 * lowest score wins. Each leg keeps the history the LinnOS encoders read:
 * pending I/O, its last four reads (latency, pending at issue), the worst
 * of its last 64 read latencies and its last four write latencies, timed
 * with ktime_get_ns() in per-bio data. A read that fails is retried on
 * another live leg; a leg that fails is marked down, said in the kernel log
 * and left out from then on.
 *
 * `dmsetup status` prints the policy and per leg: up (A) or down (D),
 * reads, reroutes (reads it got that were not its own), predicted slow,
 * errors. `dmsetup message NAME 0 policy baseline|linnos` switches the
 * policy; `dmsetup message NAME 0 reset` zeroes the counters.
 */
#define pr_fmt(fmt) "dm-augur: " fmt

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/device-mapper.h>
#include <linux/dm-io.h>
#include <linux/ioprio.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#include "augur.h"

#define DM_MSG_PREFIX "augur"
#define MAX_LEGS 8
#define READ_WINDOW 64
/* Sectors per stripe of primaries (128 KiB), as the daemon's. */
#define STRIPE_SHIFT 8

enum policy { POLICY_BASELINE, POLICY_LINNOS };

struct leg {
	struct dm_dev *dev;
	bool down;
	atomic_t pending_ios;
	atomic_t pending_pages;
	/* The history, under lock. */
	spinlock_t lock;
	struct augur_completed recent[AUGUR_HISTORY_LEN];
	u32 len;
	u32 reads_us[READ_WINDOW];
	u32 reads_n, reads_at;
	u32 writes_us[AUGUR_WRITE_HISTORY_LEN];
	u32 writes_n;
	/* Counters for status. */
	atomic64_t reads, reroutes, predicted_slow, errors;
};

struct augur_c {
	struct dm_target *ti;
	u32 n;
	int policy;
	struct dm_io_client *io;
	/* Reads to send again on another leg (from end_io, which may run in
	 * interrupt context, to process context). */
	spinlock_t retry_lock;
	struct bio_list retry;
	struct work_struct retry_work;
	struct leg legs[MAX_LEGS];
};

enum kind { KIND_OTHER, KIND_READ, KIND_WRITE };

/* Per bio. */
struct pb {
	u64 start_ns;
	struct bvec_iter iter; /* as mapped, to send a failed read again */
	u32 pages;
	u32 pending_pages_at_issue;
	u32 pending_ios_at_issue;
	u8 kind;
	u8 leg;
	u8 tried; /* legs this read has been sent to */
};

static u32 pages_of(struct bio *bio)
{
	return (bio_sectors(bio) + 7) >> 3;
}

static void leg_down(struct augur_c *ac, u32 i, const char *why)
{
	struct leg *l = &ac->legs[i];

	if (!READ_ONCE(l->down)) {
		WRITE_ONCE(l->down, true);
		pr_warn("%s: leg %u (%s) failed (%s); serving from the others\n",
			dm_table_device_name(ac->ti->table), i, l->dev->name, why);
	}
}

/* The leg's history as the encoders read it. */
static void snapshot(struct leg *l, struct augur_history *h)
{
	unsigned long flags;
	u32 i, mx = 0;

	h->pending_ios = atomic_read(&l->pending_ios);
	h->pending_pages = atomic_read(&l->pending_pages);
	/* Not tracked here: the age of the oldest pending I/O. */
	h->oldest_pending_us = 0;
	spin_lock_irqsave(&l->lock, flags);
	memcpy(h->recent, l->recent, sizeof(h->recent));
	h->len = l->len;
	for (i = 0; i < l->reads_n; i++)
		if (l->reads_us[i] > mx)
			mx = l->reads_us[i];
	memcpy(h->write_recent_us, l->writes_us, sizeof(h->write_recent_us));
	h->write_len = l->writes_n;
	spin_unlock_irqrestore(&l->lock, flags);
	h->read_max_us = mx;
}

static void record_read(struct leg *l, struct pb *p, u32 us)
{
	unsigned long flags;

	spin_lock_irqsave(&l->lock, flags);
	memmove(&l->recent[1], &l->recent[0],
		sizeof(l->recent[0]) * (AUGUR_HISTORY_LEN - 1));
	l->recent[0].latency_us = us;
	l->recent[0].pending_pages_at_issue = p->pending_pages_at_issue;
	l->recent[0].pending_ios_at_issue = p->pending_ios_at_issue;
	l->recent[0].size_bytes = p->pages << 12;
	if (l->len < AUGUR_HISTORY_LEN)
		l->len++;
	l->reads_us[l->reads_at] = us;
	l->reads_at = (l->reads_at + 1) % READ_WINDOW;
	if (l->reads_n < READ_WINDOW)
		l->reads_n++;
	spin_unlock_irqrestore(&l->lock, flags);
}

static void record_write(struct leg *l, u32 us)
{
	unsigned long flags;

	spin_lock_irqsave(&l->lock, flags);
	memmove(&l->writes_us[1], &l->writes_us[0],
		sizeof(l->writes_us[0]) * (AUGUR_WRITE_HISTORY_LEN - 1));
	l->writes_us[0] = us;
	if (l->writes_n < AUGUR_WRITE_HISTORY_LEN)
		l->writes_n++;
	spin_unlock_irqrestore(&l->lock, flags);
}

/* The first live leg at or after i that is not in mask; -1 if none. */
static int next_live(struct augur_c *ac, u32 i, u32 mask)
{
	u32 k;

	for (k = 0; k < ac->n; k++) {
		u32 c = (i + k) % ac->n;

		if (!READ_ONCE(ac->legs[c].down) && !(mask & (1u << c)))
			return c;
	}
	return -1;
}

/* Where a read goes: its primary, or under linnos the first live leg from
 * it predicted fast, else the lowest-scored. -1: no leg is live. */
static int route_read(struct augur_c *ac, struct bio *bio, u32 mask)
{
	sector_t off = dm_target_offset(ac->ti, bio->bi_iter.bi_sector);
	u32 first = (u32)((off >> STRIPE_SHIFT) % ac->n);
	int primary = next_live(ac, first, mask);
	const struct augur_model *m;
	s64 best_score = S64_MAX;
	int best = primary, c = primary;
	u32 k;

	if (primary < 0 || READ_ONCE(ac->policy) != POLICY_LINNOS)
		return primary;
	m = augur_model_get();
	if (!m) {
		augur_model_put();
		return primary;
	}
	for (k = 0; k < ac->n && c >= 0; k++) {
		struct augur_history h;
		s32 x[AUGUR_MAX_INPUTS];
		s64 out[AUGUR_MAX_OUTPUTS];
		s64 score;

		snapshot(&ac->legs[c], &h);
		if (augur_encode(m->feature_set, &h, x) != m->n_inputs)
			break; /* a feature set the kernel does not encode */
		score = augur_predict(m, x, out);
		if (score <= 0) {
			best = c;
			break;
		}
		atomic64_inc(&ac->legs[c].predicted_slow);
		if (score < best_score) {
			best_score = score;
			best = c;
		}
		mask |= 1u << c;
		c = next_live(ac, c + 1, mask);
	}
	augur_model_put();
	if (best != (int)first)
		atomic64_inc(&ac->legs[best].reroutes);
	return best;
}

static void start(struct leg *l, struct pb *p)
{
	p->pending_ios_at_issue = atomic_read(&l->pending_ios);
	p->pending_pages_at_issue = atomic_read(&l->pending_pages);
	atomic_inc(&l->pending_ios);
	atomic_add(p->pages, &l->pending_pages);
}

static void finish(struct leg *l, struct pb *p)
{
	atomic_dec(&l->pending_ios);
	atomic_sub(p->pages, &l->pending_pages);
}

static void send_read(struct augur_c *ac, struct bio *bio, struct pb *p, int leg)
{
	struct leg *l = &ac->legs[leg];

	p->leg = leg;
	p->tried |= 1u << leg;
	bio_set_dev(bio, l->dev->bdev);
	bio->bi_iter.bi_sector = p->iter.bi_sector;
	atomic64_inc(&l->reads);
	start(l, p);
	p->start_ns = ktime_get_ns();
}

/* A mirrored write: every live leg, completing when all have. */
static void write_done(unsigned long error, void *context)
{
	struct bio *bio = context;
	struct augur_c *ac = bio->bi_private;
	struct pb *p = dm_per_bio_data(bio, sizeof(struct pb));
	u32 us = (u32)min_t(u64, (ktime_get_ns() - p->start_ns) / 1000, U32_MAX);
	u32 i, ok = 0;

	for (i = 0; i < ac->n; i++) {
		if (!(p->tried & (1u << i)))
			continue;
		finish(&ac->legs[i], p);
		if (error & (1ul << i)) {
			atomic64_inc(&ac->legs[i].errors);
			leg_down(ac, i, "write error");
		} else {
			ok++;
			record_write(&ac->legs[i], us);
		}
	}
	if (!ok)
		bio->bi_status = BLK_STS_IOERR;
	bio_endio(bio);
}

static int map_write(struct augur_c *ac, struct bio *bio, struct pb *p)
{
	struct dm_io_region where[MAX_LEGS];
	struct dm_io_request req = {
		.bi_opf = bio->bi_opf,
		.mem.type = DM_IO_BIO,
		.mem.ptr.bio = bio,
		.notify.fn = write_done,
		.notify.context = bio,
		.client = ac->io,
	};
	u32 i, n = 0;

	p->kind = KIND_WRITE;
	p->tried = 0;
	for (i = 0; i < ac->n; i++) {
		/* Regions are numbered by leg: error bit i is leg i. */
		where[i].bdev = ac->legs[i].dev->bdev;
		where[i].sector = dm_target_offset(ac->ti, bio->bi_iter.bi_sector);
		where[i].count = 0;
		if (READ_ONCE(ac->legs[i].down))
			continue;
		where[i].count = bio_sectors(bio);
		p->tried |= 1u << i;
		start(&ac->legs[i], p);
		n++;
	}
	if (!n)
		return DM_MAPIO_KILL;
	bio->bi_private = ac;
	p->start_ns = ktime_get_ns();
	if (dm_io(&req, ac->n, where, NULL, IOPRIO_DEFAULT)) {
		for (i = 0; i < ac->n; i++)
			if (p->tried & (1u << i))
				finish(&ac->legs[i], p);
		return DM_MAPIO_KILL;
	}
	return DM_MAPIO_SUBMITTED;
}

static int augur_map(struct dm_target *ti, struct bio *bio)
{
	struct augur_c *ac = ti->private;
	struct pb *p = dm_per_bio_data(bio, sizeof(struct pb));
	int leg;

	p->kind = KIND_OTHER;
	p->tried = 0;
	p->leg = MAX_LEGS;
	p->pages = pages_of(bio);
	if (bio_op(bio) == REQ_OP_READ) {
		p->kind = KIND_READ;
		p->iter = bio->bi_iter;
		p->iter.bi_sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
		leg = route_read(ac, bio, 0);
		if (leg < 0)
			return DM_MAPIO_KILL;
		send_read(ac, bio, p, leg);
		return DM_MAPIO_REMAPPED;
	}
	if (bio_op(bio) == REQ_OP_WRITE && bio_sectors(bio))
		return map_write(ac, bio, p);
	/* Flushes, discards, write-zeroes: one clone per leg (num_*_bios). */
	leg = dm_bio_get_target_bio_nr(bio);
	if (leg >= (int)ac->n || READ_ONCE(ac->legs[leg].down)) {
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	}
	bio_set_dev(bio, ac->legs[leg].dev->bdev);
	if (bio_sectors(bio))
		bio->bi_iter.bi_sector = dm_target_offset(ti, bio->bi_iter.bi_sector);
	p->leg = leg;
	return DM_MAPIO_REMAPPED;
}

static void retry_work(struct work_struct *w)
{
	struct augur_c *ac = container_of(w, struct augur_c, retry_work);
	struct bio_list list;
	struct bio *bio;

	spin_lock_irq(&ac->retry_lock);
	list = ac->retry;
	bio_list_init(&ac->retry);
	spin_unlock_irq(&ac->retry_lock);
	while ((bio = bio_list_pop(&list)))
		submit_bio_noacct(bio);
}

static int augur_end_io(struct dm_target *ti, struct bio *bio,
			blk_status_t *error)
{
	struct augur_c *ac = ti->private;
	struct pb *p = dm_per_bio_data(bio, sizeof(struct pb));
	struct leg *l;
	unsigned long flags;
	int next;

	if (p->kind != KIND_READ) {
		if (p->kind == KIND_OTHER && *error && p->leg < ac->n) {
			atomic64_inc(&ac->legs[p->leg].errors);
			leg_down(ac, p->leg, "flush or discard error");
			/* The others carry it. */
			if (next_live(ac, 0, 0) >= 0)
				*error = BLK_STS_OK;
		}
		return DM_ENDIO_DONE;
	}
	l = &ac->legs[p->leg];
	finish(l, p);
	if (!*error) {
		record_read(l, p, (u32)min_t(u64, (ktime_get_ns() - p->start_ns) / 1000,
					     U32_MAX));
		return DM_ENDIO_DONE;
	}
	atomic64_inc(&l->errors);
	leg_down(ac, p->leg, "read error");
	next = next_live(ac, p->leg + 1, p->tried);
	if (next < 0)
		return DM_ENDIO_DONE;
	/* Again, whole, on another leg, from process context. */
	bio->bi_iter = p->iter;
	bio->bi_status = BLK_STS_OK;
	*error = BLK_STS_OK;
	send_read(ac, bio, p, next);
	spin_lock_irqsave(&ac->retry_lock, flags);
	bio_list_add(&ac->retry, bio);
	spin_unlock_irqrestore(&ac->retry_lock, flags);
	queue_work(system_wq, &ac->retry_work);
	return DM_ENDIO_INCOMPLETE;
}

static int parse_policy(const char *s)
{
	if (!strcmp(s, "baseline"))
		return POLICY_BASELINE;
	if (!strcmp(s, "linnos"))
		return POLICY_LINNOS;
	return -1;
}

/* <policy> <leg> <leg> [<leg> ...] */
static int augur_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct augur_c *ac;
	u32 i;
	int err;

	if (argc < 3 || argc > MAX_LEGS + 1) {
		ti->error = "expected: baseline|linnos LEG LEG [LEG ...] (2 to 8 legs)";
		return -EINVAL;
	}
	ac = kzalloc(sizeof(*ac), GFP_KERNEL);
	if (!ac)
		return -ENOMEM;
	ac->ti = ti;
	ac->n = argc - 1;
	ac->policy = parse_policy(argv[0]);
	if (ac->policy < 0) {
		ti->error = "policy must be baseline or linnos";
		err = -EINVAL;
		goto bad;
	}
	spin_lock_init(&ac->retry_lock);
	bio_list_init(&ac->retry);
	INIT_WORK(&ac->retry_work, retry_work);
	for (i = 0; i < ac->n; i++) {
		struct leg *l = &ac->legs[i];

		spin_lock_init(&l->lock);
		err = dm_get_device(ti, argv[i + 1], dm_table_get_mode(ti->table), &l->dev);
		if (err) {
			ti->error = "cannot open a leg";
			goto bad;
		}
		if (bdev_nr_sectors(l->dev->bdev) < ti->len) {
			ti->error = "a leg is smaller than the target";
			err = -EINVAL;
			goto bad;
		}
	}
	ac->io = dm_io_client_create();
	if (IS_ERR(ac->io)) {
		err = PTR_ERR(ac->io);
		ac->io = NULL;
		ti->error = "cannot create a dm-io client";
		goto bad;
	}
	ti->num_flush_bios = ac->n;
	ti->num_discard_bios = ac->n;
	ti->num_write_zeroes_bios = ac->n;
	ti->per_io_data_size = sizeof(struct pb);
	ti->private = ac;
	return 0;
bad:
	for (i = 0; i < ac->n; i++)
		if (ac->legs[i].dev)
			dm_put_device(ti, ac->legs[i].dev);
	kfree(ac);
	return err;
}

static void augur_dtr(struct dm_target *ti)
{
	struct augur_c *ac = ti->private;
	u32 i;

	flush_work(&ac->retry_work);
	dm_io_client_destroy(ac->io);
	for (i = 0; i < ac->n; i++)
		dm_put_device(ti, ac->legs[i].dev);
	kfree(ac);
}

static void augur_status(struct dm_target *ti, status_type_t type,
			 unsigned int flags, char *result, unsigned int maxlen)
{
	struct augur_c *ac = ti->private;
	unsigned int sz = 0;
	u32 i;

	switch (type) {
	case STATUSTYPE_INFO:
		DMEMIT("%s %u", ac->policy == POLICY_LINNOS ? "linnos" : "baseline", ac->n);
		for (i = 0; i < ac->n; i++) {
			struct leg *l = &ac->legs[i];

			DMEMIT(" %c %llu %llu %llu %llu", READ_ONCE(l->down) ? 'D' : 'A',
			       (unsigned long long)atomic64_read(&l->reads),
			       (unsigned long long)atomic64_read(&l->reroutes),
			       (unsigned long long)atomic64_read(&l->predicted_slow),
			       (unsigned long long)atomic64_read(&l->errors));
		}
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s", ac->policy == POLICY_LINNOS ? "linnos" : "baseline");
		for (i = 0; i < ac->n; i++)
			DMEMIT(" %s", ac->legs[i].dev->name);
		break;
	case STATUSTYPE_IMA:
		*result = '\0';
		break;
	}
}

static int augur_message(struct dm_target *ti, unsigned int argc, char **argv,
			 char *result, unsigned int maxlen)
{
	struct augur_c *ac = ti->private;
	u32 i;

	if (argc == 2 && !strcmp(argv[0], "policy")) {
		int p = parse_policy(argv[1]);

		if (p < 0) {
			DMWARN("policy must be baseline or linnos, not '%s'", argv[1]);
			return -EINVAL;
		}
		WRITE_ONCE(ac->policy, p);
		return 0;
	}
	if (argc == 1 && !strcmp(argv[0], "reset")) {
		for (i = 0; i < ac->n; i++) {
			atomic64_set(&ac->legs[i].reads, 0);
			atomic64_set(&ac->legs[i].reroutes, 0);
			atomic64_set(&ac->legs[i].predicted_slow, 0);
			atomic64_set(&ac->legs[i].errors, 0);
		}
		return 0;
	}
	DMWARN("messages: 'policy baseline|linnos', 'reset'");
	return -EINVAL;
}

static int augur_iterate_devices(struct dm_target *ti,
				 iterate_devices_callout_fn fn, void *data)
{
	struct augur_c *ac = ti->private;
	int ret = 0;
	u32 i;

	for (i = 0; !ret && i < ac->n; i++)
		ret = fn(ti, ac->legs[i].dev, 0, ti->len, data);
	return ret;
}

static struct target_type augur_target = {
	.name = "augur",
	.version = { 1, 0, 0 },
	.module = THIS_MODULE,
	.ctr = augur_ctr,
	.dtr = augur_dtr,
	.map = augur_map,
	.end_io = augur_end_io,
	.status = augur_status,
	.message = augur_message,
	.iterate_devices = augur_iterate_devices,
};

static int __init dm_augur_init(void)
{
	return dm_register_target(&augur_target);
}

static void __exit dm_augur_exit(void)
{
	dm_unregister_target(&augur_target);
}

module_init(dm_augur_init);
module_exit(dm_augur_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("dm-augur: a mirror whose reads are routed by Augur's predictor");
