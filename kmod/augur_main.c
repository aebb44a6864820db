// SPDX-License-Identifier: GPL-2.0
/*
 * augur.ko: Augur's slow-I/O predictor in the kernel, the integer path of
 * the daemon to the bit (the core is predictor/c/augur_predict.c).
 *
 * Models are loaded at run time: root (CAP_SYS_ADMIN) writes a whole model
 * file to /dev/augur in one write(); it is parsed and validated completely
 * into a standby copy, then published with rcu_replace_pointer(). Readers
 * (augur_model_get/put, the self-test ioctl) hold the model they got for
 * their whole request inside an RCU read section; the replaced model is
 * freed with kvfree_rcu() after a grace period, so no reader ever sees a
 * half-written or freed model. A bad file leaves the active model in place
 * and fails the write with the parser's errno, said in the kernel log.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/ktime.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "augur.h"
#include "augur_model.h"
#include "augur_uapi.h"

/* A published model: the RCU head first (kvfree_rcu wants it near the
 * start), then the model laid out by augur_model_build. */
struct augur_slot {
	struct rcu_head rcu;
	struct augur_model model __aligned(8);
};

static struct augur_slot __rcu *active;
/* Serialises publishers (writers of /dev/augur). */
static DEFINE_MUTEX(publish_lock);
static atomic64_t swaps = ATOMIC64_INIT(0);

/* Per-CPU room for the hidden activations of deep models, allocated at
 * load: used with preemption off (inside the caller's RCU read section,
 * never sleeping). */
static struct augur_scratch __percpu *scratch;

const struct augur_model *augur_model_get(void)
{
	struct augur_slot *s;

	rcu_read_lock();
	s = rcu_dereference(active);
	return s ? &s->model : NULL;
}
EXPORT_SYMBOL_GPL(augur_model_get);

void augur_model_put(void)
{
	rcu_read_unlock();
}
EXPORT_SYMBOL_GPL(augur_model_put);

s64 augur_predict(const struct augur_model *m, const s32 *x, s64 *out)
{
	struct augur_scratch *s = get_cpu_ptr(scratch);
	s64 score = augur_forward(m, x, out, s);

	put_cpu_ptr(scratch);
	return score;
}
EXPORT_SYMBOL_GPL(augur_predict);

void augur_predict_batch(const struct augur_model *m, const s32 *xs, u32 n,
			 s64 *scores)
{
	struct augur_scratch *s = get_cpu_ptr(scratch);

	augur_forward_batch(m, xs, n, scores, s);
	put_cpu_ptr(scratch);
}
EXPORT_SYMBOL_GPL(augur_predict_batch);
EXPORT_SYMBOL_GPL(augur_encode);

/* One write() is one whole model file. */
static ssize_t augur_write(struct file *f, const char __user *ubuf,
			   size_t len, loff_t *ppos)
{
	struct augur_slot *slot, *old;
	const char *why;
	size_t need;
	u8 *buf;
	int err;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	if (len > AUGUR_MODEL_MAX_BYTES) {
		pr_warn("model refused: %zu bytes, more than %u\n", len,
			AUGUR_MODEL_MAX_BYTES);
		return -E2BIG;
	}
	buf = vmemdup_user(ubuf, len);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	err = augur_model_check(buf, len, &need, &why);
	if (err) {
		pr_warn("model refused (%s): %s; the active model stays\n",
			augur_model_errno_name(err), why);
		goto out;
	}
	slot = kvmalloc(offsetof(struct augur_slot, model) + need, GFP_KERNEL);
	if (!slot) {
		err = -ENOMEM;
		goto out;
	}
	augur_model_build(buf, len, &slot->model);
	mutex_lock(&publish_lock);
	old = rcu_replace_pointer(active, slot, lockdep_is_held(&publish_lock));
	atomic64_inc(&swaps);
	mutex_unlock(&publish_lock);
	if (old)
		kvfree_rcu(old, rcu);
	pr_info("model %08x loaded (%u layers, %u inputs)\n", slot->model.crc,
		slot->model.n_layers, slot->model.n_inputs);
	err = 0;
out:
	kvfree(buf);
	return err ? err : (ssize_t)len;
}

static long ioc_info(void __user *arg)
{
	struct augur_ioc_info info = { 0 };
	const struct augur_model *m = augur_model_get();

	if (m) {
		info.crc = m->crc;
		info.feature_set = m->feature_set;
		info.n_inputs = m->n_inputs;
		info.n_layers = m->n_layers;
		info.n_outputs = m->layers[m->n_layers - 1].outputs;
	}
	augur_model_put();
	info.swaps = atomic64_read(&swaps);
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

/* Scores the caller's vectors with one model held for the whole batch. */
static long ioc_predict(void __user *arg)
{
	struct augur_ioc_predict req;
	const struct augur_model *m;
	s32 *xs = NULL;
	s64 *outs = NULL;
	size_t in_bytes, out_bytes;
	u32 i, n_out;
	u64 t0;
	long err = 0;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if (req.n == 0 || req.n > AUGUR_IOC_PREDICT_MAX ||
	    req.n_inputs == 0 || req.n_inputs > AUGUR_MAX_INPUTS)
		return -EINVAL;
	in_bytes = (size_t)req.n * req.n_inputs * sizeof(s32);
	out_bytes = (size_t)req.n * (AUGUR_MAX_OUTPUTS + 1) * sizeof(s64);
	xs = kvmalloc(in_bytes, GFP_KERNEL);
	outs = kvmalloc(out_bytes, GFP_KERNEL);
	if (!xs || !outs) {
		err = -ENOMEM;
		goto out;
	}
	if (copy_from_user(xs, u64_to_user_ptr(req.inputs), in_bytes)) {
		err = -EFAULT;
		goto out;
	}
	m = augur_model_get();
	if (!m || m->n_inputs != req.n_inputs) {
		augur_model_put();
		err = m ? -EINVAL : -ENODATA;
		goto out;
	}
	n_out = m->layers[m->n_layers - 1].outputs;
	req.crc = m->crc;
	req.n_outputs = n_out;
	t0 = ktime_get_ns();
	for (i = 0; i < req.n; i++) {
		s64 *o = outs + (size_t)i * (n_out + 1);

		o[n_out] = augur_predict(m, xs + (size_t)i * req.n_inputs, o);
	}
	req.elapsed_ns = ktime_get_ns() - t0;
	augur_model_put();
	if (copy_to_user(u64_to_user_ptr(req.outputs), outs,
			 (size_t)req.n * (n_out + 1) * sizeof(s64)) ||
	    copy_to_user(arg, &req, sizeof(req)))
		err = -EFAULT;
out:
	kvfree(xs);
	kvfree(outs);
	return err;
}

static long augur_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	switch (cmd) {
	case AUGUR_IOC_INFO:
		return ioc_info((void __user *)arg);
	case AUGUR_IOC_PREDICT:
		return ioc_predict((void __user *)arg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations augur_fops = {
	.owner = THIS_MODULE,
	.write = augur_write,
	.unlocked_ioctl = augur_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice augur_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "augur",
	.fops = &augur_fops,
	.mode = 0600,
};

static int __init augur_init(void)
{
	int err;

	/* 8 KiB per CPU: more than the static per-CPU area modules get. */
	scratch = alloc_percpu(struct augur_scratch);
	if (!scratch)
		return -ENOMEM;
	err = misc_register(&augur_dev);
	if (err) {
		free_percpu(scratch);
		return err;
	}
	pr_info("ready: write a model file to /dev/augur\n");
	return 0;
}

static void __exit augur_exit(void)
{
	struct augur_slot *old;

	misc_deregister(&augur_dev);
	mutex_lock(&publish_lock);
	old = rcu_replace_pointer(active, NULL, lockdep_is_held(&publish_lock));
	mutex_unlock(&publish_lock);
	/* No reader is left once the device is gone and a grace period has
	 * passed; then wait for kvfree_rcu callbacks queued by earlier swaps. */
	synchronize_rcu();
	kvfree(old);
	rcu_barrier();
	free_percpu(scratch);
}

module_init(augur_init);
module_exit(augur_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Augur: the slow-I/O predictor, loaded at run time, swapped under RCU");
