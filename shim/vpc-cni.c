/*
 * vpc-cni: the CNI executable the container runtime calls.
 *
 * It knows nothing of CNI beyond VERSION and the "daemon not reachable" error:
 * every decision lives in the node daemon, reached over a unix socket with the
 * framing of docs/contracts.md section 1. It is a static C program because it
 * runs on hosts that may have no Python at all and must start in about a
 * millisecond, and every ADD and DEL of every pod pays that start.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "VPCCNI1\n"
#define DEFAULT_SOCKET "/run/vpc-cni/cni.sock"
/* One byte past 16 MiB, so the daemon can tell "cut" from "exactly at the limit". */
#define STDIN_CAP ((16u << 20) + 1)
/* A reply larger than this is a broken daemon, not a CNI result. */
#define REPLY_CAP (64u << 20)
#ifndef REPLY_TIMEOUT_S
#define REPLY_TIMEOUT_S 150
#endif
#define PATH_CAP 4096

extern char **environ;

static const char *const versions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
#define NVERSIONS (sizeof(versions) / sizeof(versions[0]))

struct buf {
	char *p;
	size_t len, cap;
};

static void buf_put(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		char *np = realloc(b->p, cap);
		if (!np)
			_exit(1); /* nothing useful can be printed without memory */
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void buf_str(struct buf *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

static void put_be32(unsigned char *be, uint32_t v)
{
	be[0] = (unsigned char)(v >> 24);
	be[1] = (unsigned char)(v >> 16);
	be[2] = (unsigned char)(v >> 8);
	be[3] = (unsigned char)v;
}

/* Reads stdin up to the cap. A read error ends it like EOF: the daemon validates. */
static void read_stdin(struct buf *in)
{
	char chunk[65536];
	while (in->len < STDIN_CAP) {
		size_t want = STDIN_CAP - in->len;
		ssize_t r = read(0, chunk, want < sizeof(chunk) ? want : sizeof(chunk));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return;
		buf_put(in, chunk, (size_t)r);
	}
}

/* ---- the little JSON this program must read: two string-valued keys ---- */

static size_t skip_ws(const char *s, size_t n, size_t i)
{
	while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
		i++;
	return i;
}

/* Returns the index of the quote closing the string that starts at i, or n. */
static size_t string_end(const char *s, size_t n, size_t i)
{
	for (; i < n; i++) {
		if (s[i] == '\\')
			i++;
		else if (s[i] == '"')
			return i;
	}
	return n;
}

/*
 * Offset of the value of the first key named `key` (only at the top level if
 * top_only), or -1. Strings are skipped whole, so a key-like text inside a
 * value never matches.
 */
static long find_key(const char *s, size_t n, const char *key, int top_only)
{
	size_t klen = strlen(key);
	int depth = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '{' || s[i] == '[') {
			depth++;
		} else if (s[i] == '}' || s[i] == ']') {
			depth--;
		} else if (s[i] == '"') {
			size_t e = string_end(s, n, i + 1);
			if (e >= n)
				return -1;
			size_t v = skip_ws(s, n, e + 1);
			if (v < n && s[v] == ':' && e - i - 1 == klen &&
			    memcmp(s + i + 1, key, klen) == 0 && (!top_only || depth == 1))
				return (long)skip_ws(s, n, v + 1);
			i = e;
		}
	}
	return -1;
}

/* Length of the valid UTF-8 sequence at s, 0 if invalid (overlongs, surrogates). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	size_t len;
	unsigned char lo = 0x80, hi = 0xbf;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4;
	else
		return 0;
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	if (n < len || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t k = 2; k < len; k++)
		if (s[k] < 0x80 || s[k] > 0xbf)
			return 0;
	return len;
}

/* Decodes the escape at s[*k] (a backslash) into a code point; -1 if invalid. */
static int json_escape(const char *s, size_t n, size_t *k, unsigned *cp)
{
	static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
	const char *hit = *k + 1 < n && s[*k + 1] ? strchr(from, s[*k + 1]) : NULL;
	if (hit) {
		*cp = (unsigned char)to[hit - from];
		*k += 2;
		return 0;
	}
	if (*k + 6 > n || s[*k + 1] != 'u')
		return -1;
	*cp = 0;
	for (size_t d = *k + 2; d < *k + 6; d++) {
		unsigned char h = (unsigned char)s[d], l = h | 0x20;
		if (h >= '0' && h <= '9')
			*cp = *cp << 4 | (unsigned)(h - '0');
		else if (l >= 'a' && l <= 'f')
			*cp = *cp << 4 | (unsigned)(l - 'a' + 10);
		else
			return -1;
	}
	*k += 6;
	/* NUL would cut the path; lone or paired surrogates are not worth decoding here. */
	return *cp && (*cp < 0xd800 || *cp > 0xdfff) ? 0 : -1;
}

/* Encodes a BMP code point as UTF-8; returns the length. */
static size_t utf8_put(unsigned cp, char *enc)
{
	if (cp < 0x80) {
		enc[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		enc[0] = (char)(0xc0 | cp >> 6);
		enc[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	enc[0] = (char)(0xe0 | cp >> 12);
	enc[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
	enc[2] = (char)(0x80 | (cp & 0x3f));
	return 3;
}

/*
 * Decodes the JSON string value at s[i] into out (NUL-terminated, valid UTF-8).
 * Returns 0, or -1 for anything that is not a plain, non-empty string that
 * fits: not a string, bad escape, \u0000, surrogates, invalid UTF-8.
 */
static int json_string(const char *s, size_t n, long i, char *out, size_t cap)
{
	size_t o = 0, k;
	if (i < 0 || (size_t)i >= n || s[i] != '"')
		return -1;
	for (k = (size_t)i + 1; k < n && s[k] != '"';) {
		unsigned char c = (unsigned char)s[k];
		char enc[4];
		size_t len = 1;
		unsigned cp;
		if (c < 0x20)
			return -1;
		if (c == '\\') {
			if (json_escape(s, n, &k, &cp))
				return -1;
			len = utf8_put(cp, enc);
		} else {
			if (c >= 0x80 && !(len = utf8_seq((const unsigned char *)s + k, n - k)))
				return -1;
			memcpy(enc, s + k, len);
			k += len;
		}
		if (o + len >= cap)
			return -1;
		memcpy(out + o, enc, len);
		o += len;
	}
	out[o] = '\0';
	return k < n && o > 0 ? 0 : -1;
}

/* The stdin's top-level cniVersion if this program supports it, else the newest. */
static const char *reply_version(const struct buf *in)
{
	char v[16];
	if (json_string(in->p, in->len, find_key(in->p, in->len, "cniVersion", 1), v, sizeof(v)) == 0)
		for (size_t k = 0; k < NVERSIONS; k++)
			if (strcmp(v, versions[k]) == 0)
				return versions[k];
	return versions[NVERSIONS - 1];
}

/* ---- output ---- */

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t r = write(fd, p, n);
		if (r > 0) {
			p += r;
			n -= (size_t)r;
		} else if (errno == EAGAIN) {
			struct pollfd pfd = {.fd = fd, .events = POLLOUT};
			poll(&pfd, 1, -1);
		} else if (errno != EINTR) {
			return -1;
		}
	}
	return 0;
}

/* Appends s as a JSON string; s is valid UTF-8, so only quotes and controls need escapes. */
static void json_put(struct buf *o, const char *s)
{
	buf_put(o, "\"", 1);
	for (; *s; s++) {
		char esc[8];
		if (*s == '"' || *s == '\\') {
			buf_put(o, "\\", 1);
			buf_put(o, s, 1);
		} else if ((unsigned char)*s < 0x20) {
			snprintf(esc, sizeof(esc), "\\u%04x", (unsigned char)*s);
			buf_put(o, esc, 6);
		} else {
			buf_put(o, s, 1);
		}
	}
	buf_put(o, "\"", 1);
}

static int print_version(const char *v)
{
	struct buf o = {0};
	buf_str(&o, "{\"cniVersion\": ");
	json_put(&o, v);
	buf_str(&o, ", \"supportedVersions\": [");
	for (size_t k = 0; k < NVERSIONS; k++) {
		if (k)
			buf_str(&o, ", ");
		json_put(&o, versions[k]);
	}
	buf_str(&o, "]}\n");
	return write_all(1, o.p, o.len) ? 1 : 0;
}

static int print_unreachable(const char *v, const char *path, int err, int status)
{
	struct buf o = {0};
	char msg[PATH_CAP + 64];
	snprintf(msg, sizeof(msg), "vpc-cni daemon not reachable at %s", path);
	buf_str(&o, "{\"cniVersion\": ");
	json_put(&o, v);
	buf_str(&o, status ? ", \"code\": 50, \"msg\": " : ", \"code\": 11, \"msg\": ");
	json_put(&o, msg);
	buf_str(&o, ", \"details\": ");
	json_put(&o, strerror(err));
	buf_str(&o, "}\n");
	write_all(1, o.p, o.len);
	return 1;
}

/* ---- the exchange with the daemon ---- */

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* Sends (out) or receives exactly n bytes before the deadline; 0 or an errno. */
static int sock_io(int fd, char *p, size_t n, int out, double deadline)
{
	while (n > 0) {
		ssize_t r = out ? send(fd, p, n, MSG_NOSIGNAL) : recv(fd, p, n, 0);
		if (r > 0) {
			p += r;
			n -= (size_t)r;
			continue;
		}
		if (r == 0)
			return ECONNRESET; /* the daemon closed before a full reply */
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return errno;
		int ms = (int)((deadline - now()) * 1000);
		if (ms <= 0)
			return ETIMEDOUT;
		struct pollfd pfd = {.fd = fd, .events = out ? POLLOUT : POLLIN};
		if (poll(&pfd, 1, ms) == 0)
			return ETIMEDOUT;
	}
	return 0;
}

static uint32_t be32(const unsigned char *b)
{
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/*
 * One request, one reply. A send that fails (the daemon closed early, for
 * instance after rejecting the caller) does not end it: the daemon may still
 * have written a complete reply, which is what the runtime should see.
 */
static int exchange(const char *path, const struct buf req[2], struct buf *reply, uint32_t *code)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	double deadline = now() + REPLY_TIMEOUT_S;
	if (strlen(path) >= sizeof(sa.sun_path))
		return ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return errno;
	while (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno != EINTR) {
			int err = errno;
			close(fd);
			return err;
		}
	}
	fcntl(fd, F_SETFL, O_NONBLOCK);
	int send_err = sock_io(fd, req[0].p, req[0].len, 1, deadline);
	if (!send_err)
		send_err = sock_io(fd, req[1].p, req[1].len, 1, deadline);
	if (send_err == ETIMEDOUT) {
		close(fd);
		return send_err;
	}
	unsigned char head[8];
	int err = sock_io(fd, (char *)head, 8, 0, deadline);
	if (!err && be32(head + 4) > REPLY_CAP)
		err = EMSGSIZE;
	if (!err) {
		*code = be32(head);
		reply->len = be32(head + 4);
		reply->p = malloc(reply->len + 1);
		err = reply->p ? sock_io(fd, reply->p, reply->len, 0, deadline) : ENOMEM;
	}
	close(fd);
	return err && send_err ? send_err : err;
}

int main(void)
{
	struct buf in = {0}, req[2] = {{0}}, reply = {0};
	char path[PATH_CAP] = DEFAULT_SOCKET;
	const char *command = getenv("CNI_COMMAND");
	uint32_t code = 1;

	/* A closed stdout would make the socket fd 1 and the reply would go back into it. */
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) != fd)
			return 1;
	signal(SIGPIPE, SIG_IGN);
	read_stdin(&in);
	const char *version = reply_version(&in);
	if (command && strcmp(command, "VERSION") == 0)
		return print_version(version);

	if (json_string(in.p, in.len, find_key(in.p, in.len, "daemonSocket", 0), path, sizeof(path)))
		strcpy(path, DEFAULT_SOCKET);

	/* Header: magic, env_len (patched once known), env, stdin_len; then stdin itself. */
	buf_put(&req[0], MAGIC "\0\0\0\0", 12);
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "CNI_", 4) == 0)
			buf_put(&req[0], *e, strlen(*e) + 1);
	put_be32((unsigned char *)req[0].p + 8, (uint32_t)(req[0].len - 12));
	unsigned char stdin_len[4];
	put_be32(stdin_len, (uint32_t)in.len);
	buf_put(&req[0], stdin_len, 4);
	req[1] = in;

	int err = exchange(path, req, &reply, &code);
	if (err)
		return print_unreachable(version, path, err, command && strcmp(command, "STATUS") == 0);
	if (write_all(1, reply.p, reply.len))
		return 1;
	/* Exit statuses are 8 bits: a larger code must still read as failure. */
	return code > 255 ? 1 : (int)code;
}
