/*
 * LD_PRELOAD shim that lets charon "install" ESP SAs on a kernel without ESP.
 *
 * It rewrites requests sent on NETLINK_XFRM sockets (sendto/sendmsg/send/write):
 *   XFRM_MSG_NEWSA  -> XFRM_MSG_NEWSPDINFO without attributes: a request every
 *                      kernel accepts and acknowledges, changing nothing.
 *   XFRM_MSG_UPDSA  -> XFRM_MSG_DELSA of the same (daddr, spi, proto): removes
 *                      the larval SA that XFRM_MSG_ALLOCSPI left behind.
 *   XFRM_MSG_DELSA  -> the no-op as well, when it names an SA this shim faked,
 *                      so rekey and teardown succeed too.
 * Sequence number, port id and flags are kept, so charon receives the kernel's
 * acknowledgement for the sequence number it waits for. Policies (NEWPOLICY...)
 * and everything else pass through unchanged.
 *
 * If XFRM_SHIM_LOG names a file, one line per rewrite is appended to it.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/xfrm.h>

#define MAX_FAKED 1024
#define MAX_MESSAGE 65536

struct sa_key {
	xfrm_address_t daddr;
	__be32 spi;
	__u16 family;
	__u8 proto;
	int used;
};

static struct sa_key faked[MAX_FAKED];
static pthread_mutex_t faked_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;

static ssize_t (*real_sendto)(int, const void *, size_t, int,
			      const struct sockaddr *, socklen_t);
static ssize_t (*real_sendmsg)(int, const struct msghdr *, int);
static ssize_t (*real_send)(int, const void *, size_t, int);
static ssize_t (*real_write)(int, const void *, size_t);

__attribute__((constructor)) static void shim_init(void)
{
	const char *path = getenv("XFRM_SHIM_LOG");

	real_sendto = dlsym(RTLD_NEXT, "sendto");
	real_sendmsg = dlsym(RTLD_NEXT, "sendmsg");
	real_send = dlsym(RTLD_NEXT, "send");
	real_write = dlsym(RTLD_NEXT, "write");
	if (path && *path)
		log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

static void log_rewrite(const char *what, __be32 spi, __u8 proto)
{
	char line[96];
	int n;

	if (log_fd < 0)
		return;
	n = snprintf(line, sizeof(line), "%s spi=0x%08x proto=%u\n", what,
		     ntohl(spi), proto);
	if (n > 0)
		real_write(log_fd, line, (size_t)n);
}

/* Is fd a NETLINK_XFRM socket? Leaves errno untouched (write() on files). */
static int is_xfrm_socket(int fd)
{
	int saved = errno, domain = 0, protocol = 0, ok;
	socklen_t len = sizeof(domain);

	ok = getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 &&
	     domain == AF_NETLINK;
	len = sizeof(protocol);
	ok = ok && getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) == 0 &&
	     protocol == NETLINK_XFRM;
	errno = saved;
	return ok;
}

static int same_sa(const struct sa_key *k, const xfrm_address_t *daddr,
		   __be32 spi, __u16 family, __u8 proto)
{
	return k->used && k->spi == spi && k->family == family &&
	       k->proto == proto && memcmp(&k->daddr, daddr, sizeof(*daddr)) == 0;
}

static void remember_sa(const xfrm_address_t *daddr, __be32 spi, __u16 family,
			__u8 proto)
{
	int i, slot = -1;

	pthread_mutex_lock(&faked_lock);
	for (i = 0; i < MAX_FAKED && slot < 0; i++)
		if (same_sa(&faked[i], daddr, spi, family, proto))
			slot = i;
	for (i = 0; i < MAX_FAKED && slot < 0; i++)
		if (!faked[i].used)
			slot = i;
	if (slot >= 0) {
		faked[slot].daddr = *daddr;
		faked[slot].spi = spi;
		faked[slot].family = family;
		faked[slot].proto = proto;
		faked[slot].used = 1;
	}
	pthread_mutex_unlock(&faked_lock);
}

/* Forget a faked SA; returns 1 if it was one of ours. */
static int forget_sa(const xfrm_address_t *daddr, __be32 spi, __u16 family,
		     __u8 proto)
{
	int i, found = 0;

	pthread_mutex_lock(&faked_lock);
	for (i = 0; i < MAX_FAKED && !found; i++) {
		if (same_sa(&faked[i], daddr, spi, family, proto)) {
			faked[i].used = 0;
			found = 1;
		}
	}
	pthread_mutex_unlock(&faked_lock);
	return found;
}

/* Append the acknowledged no-op (NEWSPDINFO, no attributes) for request hdr. */
static size_t put_noop(char *out, const struct nlmsghdr *hdr)
{
	struct nlmsghdr *noop = (struct nlmsghdr *)out;

	memset(out, 0, NLMSG_SPACE(sizeof(__u32)));
	noop->nlmsg_len = NLMSG_LENGTH(sizeof(__u32));
	noop->nlmsg_type = XFRM_MSG_NEWSPDINFO;
	noop->nlmsg_flags = hdr->nlmsg_flags;
	noop->nlmsg_seq = hdr->nlmsg_seq;
	noop->nlmsg_pid = hdr->nlmsg_pid;
	return NLMSG_SPACE(sizeof(__u32));
}

/* Append a DELSA for the SA an UPDSA would have completed. */
static size_t put_delete(char *out, const struct nlmsghdr *hdr,
			 const struct xfrm_usersa_info *info)
{
	struct nlmsghdr *del = (struct nlmsghdr *)out;
	struct xfrm_usersa_id *id;

	memset(out, 0, NLMSG_SPACE(sizeof(*id)));
	del->nlmsg_len = NLMSG_LENGTH(sizeof(*id));
	del->nlmsg_type = XFRM_MSG_DELSA;
	del->nlmsg_flags = hdr->nlmsg_flags;
	del->nlmsg_seq = hdr->nlmsg_seq;
	del->nlmsg_pid = hdr->nlmsg_pid;
	id = NLMSG_DATA(del);
	id->daddr = info->id.daddr;
	id->spi = info->id.spi;
	id->family = info->family;
	id->proto = info->id.proto;
	return NLMSG_SPACE(sizeof(*id));
}

/*
 * Rewrite one netlink request buffer into out (len + NLMSG_ALIGNTO bytes big:
 * rewritten messages are shorter than the originals).
 * Returns the new length, or 0 when nothing needed rewriting.
 */
static size_t rewrite(const char *in, size_t len, char *out)
{
	const struct nlmsghdr *hdr = (const struct nlmsghdr *)in;
	size_t used = 0, left = len;
	int changed = 0;

	for (; NLMSG_OK(hdr, left); hdr = NLMSG_NEXT(hdr, left)) {
		const void *body = NLMSG_DATA(hdr);
		size_t body_len = hdr->nlmsg_len - NLMSG_HDRLEN;

		if ((hdr->nlmsg_type == XFRM_MSG_NEWSA || hdr->nlmsg_type == XFRM_MSG_UPDSA) &&
		    body_len >= sizeof(struct xfrm_usersa_info)) {
			const struct xfrm_usersa_info *info = body;

			remember_sa(&info->id.daddr, info->id.spi, info->family,
				    info->id.proto);
			if (hdr->nlmsg_type == XFRM_MSG_NEWSA) {
				used += put_noop(out + used, hdr);
				log_rewrite("NEWSA->noop", info->id.spi, info->id.proto);
			} else {
				used += put_delete(out + used, hdr, info);
				log_rewrite("UPDSA->DELSA", info->id.spi, info->id.proto);
			}
			changed = 1;
		} else if (hdr->nlmsg_type == XFRM_MSG_DELSA &&
			   body_len >= sizeof(struct xfrm_usersa_id) &&
			   forget_sa(&((const struct xfrm_usersa_id *)body)->daddr,
				     ((const struct xfrm_usersa_id *)body)->spi,
				     ((const struct xfrm_usersa_id *)body)->family,
				     ((const struct xfrm_usersa_id *)body)->proto)) {
			const struct xfrm_usersa_id *id = body;

			used += put_noop(out + used, hdr);
			log_rewrite("DELSA->noop", id->spi, id->proto);
			changed = 1;
		} else {
			/* out has room for the padding of an unpadded last message */
			memset(out + used, 0, NLMSG_ALIGN(hdr->nlmsg_len));
			memcpy(out + used, hdr, hdr->nlmsg_len);
			used += NLMSG_ALIGN(hdr->nlmsg_len);
		}
	}
	return changed ? used : 0;
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags,
	       const struct sockaddr *addr, socklen_t addrlen)
{
	char out[MAX_MESSAGE + NLMSG_ALIGNTO];
	size_t new_len;
	ssize_t sent;

	if (len > sizeof(out) || !is_xfrm_socket(fd))
		return real_sendto(fd, buf, len, flags, addr, addrlen);
	new_len = rewrite(buf, len, out);
	if (!new_len)
		return real_sendto(fd, buf, len, flags, addr, addrlen);
	sent = real_sendto(fd, out, new_len, flags, addr, addrlen);
	return sent < 0 ? sent : (ssize_t)len;
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	return sendto(fd, buf, len, flags, NULL, 0);
}

ssize_t write(int fd, const void *buf, size_t len)
{
	if (!is_xfrm_socket(fd))
		return real_write(fd, buf, len);
	return sendto(fd, buf, len, 0, NULL, 0);
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	char in[MAX_MESSAGE], out[MAX_MESSAGE + NLMSG_ALIGNTO];
	struct msghdr copy;
	struct iovec iov;
	size_t len = 0, new_len, i;
	ssize_t sent;

	if (!is_xfrm_socket(fd))
		return real_sendmsg(fd, msg, flags);
	for (i = 0; i < (size_t)msg->msg_iovlen; i++) {
		if (msg->msg_iov[i].iov_len > sizeof(in) - len)
			return real_sendmsg(fd, msg, flags);
		memcpy(in + len, msg->msg_iov[i].iov_base, msg->msg_iov[i].iov_len);
		len += msg->msg_iov[i].iov_len;
	}
	new_len = rewrite(in, len, out);
	if (!new_len)
		return real_sendmsg(fd, msg, flags);
	copy = *msg;
	iov.iov_base = out;
	iov.iov_len = new_len;
	copy.msg_iov = &iov;
	copy.msg_iovlen = 1;
	sent = real_sendmsg(fd, &copy, flags);
	return sent < 0 ? sent : (ssize_t)len;
}
