/* mockllm: a lean OpenAI-compatible upstream for proxy benchmarks.
 *
 * One epoll loop per process (--workers N forks N with SO_REUSEPORT), HTTP/1.1 keep-alive,
 * canned vLLM-shaped JSON. Streams are timed by a min-heap of deadlines, so thousands of
 * open streams cost no threads. It answers:
 *   GET  /health, /ping, /version, /metrics (vLLM gauge names), /v1/models
 *   POST /v1/chat/completions, /v1/completions   (stream true/false, stream_options.include_usage)
 * Output length: max_tokens / max_completion_tokens from the body, else --tokens.
 * Timing: first token after --ttft-ms, then one chunk every --delay-ms. A request can override
 * both (and the length) with a directive anywhere in its body, which every proxy passes through
 * untouched inside the prompt:  [[mock ttft_ms=0 delay_ms=10 tokens=200]]
 * A non-streaming answer is sent whole after ttft + (n-1)*delay.
 *
 *   mockllm --port 9000 [--host 127.0.0.1] [--model NAME]... [--tokens 16] [--ttft-ms 0]
 *           [--delay-ms 0] [--max-model-len 131072] [--workers 1]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_MODELS 16
#define MAX_IN (8 << 20)

static const char *g_host = "127.0.0.1";
static int g_port = 9000, g_tokens = 16, g_ttft = 0, g_delay = 0, g_workers = 1;
static long g_max_len = 131072;
static const char *g_models[MAX_MODELS];
static int g_nmodels = 0;
static long g_running = 0, g_finished = 0, g_generated = 0, g_seq = 0;
static const char *WORDS[] = {" lorem", " ipsum", " dolor", " sit", " amet", " consectetur",
                              " adipiscing", " elit"};

typedef struct { char *p; size_t len, cap; } buf_t;

typedef struct conn {
  int fd, heap_i, closing, want_out;
  buf_t in, out;
  /* the response in progress, if any */
  int active, stream, chat, usage, left, total, sent, delay;
  int64_t deadline;
  long id;
  char model[160];
  int prompt_tokens;
} conn_t;

static int ep;
static conn_t **heap;
static int heap_n, heap_cap;

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void buf_reserve(buf_t *b, size_t extra) {
  if (b->len + extra <= b->cap) return;
  size_t cap = b->cap ? b->cap : 1024;
  while (cap < b->len + extra) cap *= 2;
  b->p = realloc(b->p, cap);
  b->cap = cap;
}
static void buf_add(buf_t *b, const char *s, size_t n) {
  buf_reserve(b, n);
  memcpy(b->p + b->len, s, n);
  b->len += n;
}
static void buf_fmt(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_fmt(buf_t *b, const char *fmt, ...) {
  va_list ap;
  for (;;) {
    size_t room = b->cap - b->len;
    va_start(ap, fmt);
    int n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < room) { b->len += n; return; }
    buf_reserve(b, n + 1);
  }
}
static void buf_drop(buf_t *b, size_t n) {
  if (n >= b->len) { b->len = 0; return; }
  memmove(b->p, b->p + n, b->len - n);
  b->len -= n;
}

/* ---- deadline heap ---- */
static void heap_swap(int a, int b) {
  conn_t *t = heap[a]; heap[a] = heap[b]; heap[b] = t;
  heap[a]->heap_i = a; heap[b]->heap_i = b;
}
static void heap_up(int i) {
  while (i > 0) {
    int p = (i - 1) / 2;
    if (heap[p]->deadline <= heap[i]->deadline) break;
    heap_swap(p, i); i = p;
  }
}
static void heap_down(int i) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < heap_n && heap[l]->deadline < heap[m]->deadline) m = l;
    if (r < heap_n && heap[r]->deadline < heap[m]->deadline) m = r;
    if (m == i) return;
    heap_swap(i, m); i = m;
  }
}
static void heap_push(conn_t *c) {
  if (heap_n == heap_cap) {
    heap_cap = heap_cap ? heap_cap * 2 : 1024;
    heap = realloc(heap, heap_cap * sizeof *heap);
  }
  heap[heap_n] = c; c->heap_i = heap_n++;
  heap_up(c->heap_i);
}
static void heap_remove(conn_t *c) {
  int i = c->heap_i;
  if (i < 0) return;
  c->heap_i = -1;
  if (--heap_n == i) return;
  heap[i] = heap[heap_n]; heap[i]->heap_i = i;
  heap_up(i); heap_down(heap[i]->heap_i);
}

/* ---- connections ---- */
static void conn_close(conn_t *c) {
  heap_remove(c);
  if (c->active) { g_running--; c->active = 0; }
  close(c->fd);
  free(c->in.p); free(c->out.p); free(c);
}

static void set_out_interest(conn_t *c, int want) {
  if (c->want_out == want) return;
  struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
  c->want_out = want;
}

/* Returns -1 when the connection died. */
static int flush_out(conn_t *c) {
  while (c->out.len) {
    ssize_t n = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
    if (n > 0) { buf_drop(&c->out, n); continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { set_out_interest(c, 1); return 0; }
    return -1;
  }
  set_out_interest(c, 0);
  if (c->closing && !c->active) return -1;
  return 0;
}

static void respond(conn_t *c, int status, const char *ctype, const char *body, size_t n) {
  const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request";
  buf_fmt(&c->out, "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n%s\r\n", status,
          reason, ctype, n, c->closing ? "connection: close\r\n" : "");
  buf_add(&c->out, body, n);
}

/* ---- tiny JSON scans (the bodies are ours or a proxy's re-serialisation of ours) ---- */
static const char *after_key(const char *body, size_t n, const char *key) {
  const char *p = memmem(body, n, key, strlen(key));
  if (!p) return NULL;
  p += strlen(key);
  const char *end = body + n;
  while (p < end && (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p < end ? p : NULL;
}
static long key_int(const char *body, size_t n, const char *key, long dflt) {
  const char *p = after_key(body, n, key);
  if (!p || *p < '0' || *p > '9') return dflt;
  return strtol(p, NULL, 10);
}
static int key_true(const char *body, size_t n, const char *key) {
  const char *p = after_key(body, n, key);
  return p && (size_t)(body + n - p) >= 4 && memcmp(p, "true", 4) == 0;
}
static long directive(const char *body, size_t n, const char *name, long dflt) {
  const char *d = memmem(body, n, "[[mock", 6);
  if (!d) return dflt;
  size_t rest = body + n - d;
  const char *close = memmem(d, rest, "]]", 2);
  if (!close) return dflt;
  const char *p = memmem(d, close - d, name, strlen(name));
  if (!p || p[strlen(name)] != '=') return dflt;
  return strtol(p + strlen(name) + 1, NULL, 10);
}

static void emit_chunk(conn_t *c, buf_t *tmp, int last) {
  const char *w = WORDS[c->sent % 8];
  tmp->len = 0;
  const char *fin = last ? "\"length\"" : "null";
  if (c->chat)
    buf_fmt(tmp,
            "data: {\"id\":\"chatcmpl-mock-%ld\",\"object\":\"chat.completion.chunk\",\"created\":%ld,"
            "\"model\":\"%s\",\"choices\":[{\"index\":0,\"delta\":{%s\"content\":\"%s\"},"
            "\"logprobs\":null,\"finish_reason\":%s}]}\n\n",
            c->id, (long)time(NULL), c->model, c->sent == 0 ? "\"role\":\"assistant\"," : "", w, fin);
  else
    buf_fmt(tmp,
            "data: {\"id\":\"cmpl-mock-%ld\",\"object\":\"text_completion\",\"created\":%ld,"
            "\"model\":\"%s\",\"choices\":[{\"index\":0,\"text\":\"%s\",\"logprobs\":null,"
            "\"finish_reason\":%s}]}\n\n",
            c->id, (long)time(NULL), c->model, w, fin);
  buf_fmt(&c->out, "%zx\r\n", tmp->len);
  buf_add(&c->out, tmp->p, tmp->len);
  buf_add(&c->out, "\r\n", 2);
  c->sent++;
  g_generated++;
}

static void finish(conn_t *c) {
  c->active = 0;
  g_running--;
  g_finished++;
}

/* Emit whatever is due for this connection's response. */
static void advance(conn_t *c, int64_t now) {
  static buf_t tmp;
  if (!c->stream) {
    tmp.len = 0;
    for (int i = 0; i < c->total; i++) buf_add(&tmp, WORDS[i % 8], strlen(WORDS[i % 8]));
    buf_t body = {0};
    const char *obj = c->chat ? "chat.completion" : "text_completion";
    buf_fmt(&body, "{\"id\":\"%smock-%ld\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\",\"choices\":[{\"index\":0,",
            c->chat ? "chatcmpl-" : "cmpl-", c->id, obj, (long)time(NULL), c->model);
    if (c->chat) buf_fmt(&body, "\"message\":{\"role\":\"assistant\",\"content\":\"%.*s\"},", (int)tmp.len, tmp.p);
    else buf_fmt(&body, "\"text\":\"%.*s\",", (int)tmp.len, tmp.p);
    buf_fmt(&body, "\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":%d,"
            "\"completion_tokens\":%d,\"total_tokens\":%d}}", c->prompt_tokens, c->total,
            c->prompt_tokens + c->total);
    g_generated += c->total;
    respond(c, 200, "application/json", body.p, body.len);
    free(body.p);
    finish(c);
    return;
  }
  while (c->left > 0 && c->deadline <= now) {
    c->left--;
    emit_chunk(c, &tmp, c->left == 0);
    c->deadline += c->delay;
  }
  if (c->left > 0) { heap_push(c); return; }
  if (c->usage) {
    tmp.len = 0;
    buf_fmt(&tmp, "data: {\"id\":\"%smock-%ld\",\"object\":\"%s\",\"created\":%ld,\"model\":\"%s\",\"choices\":[],"
            "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n",
            c->chat ? "chatcmpl-" : "cmpl-", c->id, c->chat ? "chat.completion.chunk" : "text_completion",
            (long)time(NULL), c->model, c->prompt_tokens, c->total, c->prompt_tokens + c->total);
    buf_fmt(&c->out, "%zx\r\n", tmp.len);
    buf_add(&c->out, tmp.p, tmp.len);
    buf_add(&c->out, "\r\n", 2);
  }
  static const char done[] = "e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
  buf_add(&c->out, done, sizeof done - 1);
  finish(c);
}

static void start_generation(conn_t *c, int chat, const char *body, size_t n) {
  c->chat = chat;
  c->stream = key_true(body, n, "\"stream\"");
  c->usage = key_true(body, n, "\"include_usage\"");
  long tokens = key_int(body, n, "\"max_tokens\"", key_int(body, n, "\"max_completion_tokens\"", g_tokens));
  tokens = directive(body, n, "tokens", tokens);
  if (tokens < 1) tokens = 1;
  if (tokens > 1000000) tokens = 1000000;
  long ttft = directive(body, n, "ttft_ms", g_ttft);
  c->delay = (int)directive(body, n, "delay_ms", g_delay);
  c->total = c->left = (int)tokens;
  c->sent = 0;
  c->prompt_tokens = (int)(n / 4) + 1;
  c->id = ++g_seq;
  /* echo the model name (first "model" key), else the first served one */
  const char *m = after_key(body, n, "\"model\"");
  size_t ml = 0;
  if (m && *m == '"') {
    m++;
    while (m + ml < body + n && m[ml] != '"' && ml < sizeof c->model - 1) ml++;
    memcpy(c->model, m, ml);
  } else {
    ml = strlen(g_models[0]); memcpy(c->model, g_models[0], ml);
  }
  c->model[ml] = 0;
  c->active = 1;
  g_running++;
  static const char sse_head[] = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 "cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
  if (c->stream) buf_add(&c->out, sse_head, sizeof sse_head - 1);
  int64_t start = now_ms();
  c->deadline = start + ttft + (c->stream ? 0 : (int64_t)(tokens - 1) * c->delay);
  if (c->deadline <= start) advance(c, start);
  else heap_push(c);
}

static void route(conn_t *c, const char *method, const char *path, size_t plen, const char *body, size_t n) {
  static buf_t tmp;
  tmp.len = 0;
#define IS(s) (plen == sizeof(s) - 1 && memcmp(path, s, plen) == 0)
  if (method[0] == 'P') {
    if (IS("/v1/chat/completions")) return start_generation(c, 1, body, n);
    if (IS("/v1/completions")) return start_generation(c, 0, body, n);
  } else {
    if (IS("/health") || IS("/ping")) return respond(c, 200, "text/plain", "", 0);
    if (IS("/version")) return respond(c, 200, "application/json", "{\"version\":\"0.16.0\"}", 20);
    if (IS("/metrics")) {
      for (int i = 0; i < g_nmodels; i++)
        buf_fmt(&tmp, "vllm:num_requests_running{model_name=\"%s\"} %ld\nvllm:num_requests_waiting{model_name=\"%s\"} 0\n"
                "vllm:kv_cache_usage_perc{model_name=\"%s\"} 0.0\nvllm:generation_tokens_total{model_name=\"%s\"} %ld\n"
                "vllm:request_success_total{finished_reason=\"length\",model_name=\"%s\"} %ld\n",
                g_models[i], i ? 0 : g_running, g_models[i], g_models[i], g_models[i], i ? 0 : g_generated,
                g_models[i], i ? 0 : g_finished);
      return respond(c, 200, "text/plain; version=0.0.4", tmp.p ? tmp.p : "", tmp.len);
    }
    if (IS("/v1/models")) {
      buf_add(&tmp, "{\"object\":\"list\",\"data\":[", 25);
      for (int i = 0; i < g_nmodels; i++)
        buf_fmt(&tmp, "%s{\"id\":\"%s\",\"object\":\"model\",\"created\":0,\"owned_by\":\"mock\",\"root\":\"%s\","
                "\"max_model_len\":%ld}", i ? "," : "", g_models[i], g_models[i], g_max_len);
      buf_add(&tmp, "]}", 2);
      return respond(c, 200, "application/json", tmp.p, tmp.len);
    }
  }
  static const char nf[] = "{\"error\":{\"message\":\"not found\",\"type\":\"NotFoundError\",\"code\":404}}";
  respond(c, 404, "application/json", nf, sizeof nf - 1);
#undef IS
}

/* Decode a chunked body in place; returns consumed bytes of raw, 0 if incomplete, -1 if bad. */
static long dechunk(char *raw, size_t n, size_t *out_len) {
  size_t r = 0, w = 0;
  for (;;) {
    char *eol = memmem(raw + r, n - r, "\r\n", 2);
    if (!eol) return 0;
    long sz = strtol(raw + r, NULL, 16);
    if (sz < 0) return -1;
    size_t data = (eol - raw) + 2;
    if (sz == 0) {
      char *end = memmem(raw + data, n - data, "\r\n", 2);  /* no trailers expected */
      if (!end) return 0;
      *out_len = w;
      return (end - raw) + 2;
    }
    if (data + sz + 2 > n) return 0;
    memmove(raw + w, raw + data, sz);
    w += sz;
    r = data + sz + 2;
  }
}

/* Parse and serve every complete request in the input buffer (one at a time). */
static int on_input(conn_t *c) {
  while (!c->active && c->in.len) {
    char *hend = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
    if (!hend) return c->in.len > 65536 ? -1 : 0;
    size_t hlen = hend - c->in.p + 4;
    char *sp1 = memchr(c->in.p, ' ', hlen);
    if (!sp1) return -1;
    char *sp2 = memchr(sp1 + 1, ' ', hlen - (sp1 + 1 - c->in.p));
    if (!sp2) return -1;
    char *path = sp1 + 1;
    size_t plen = sp2 - path;
    char *q = memchr(path, '?', plen);
    if (q) plen = q - path;
    long clen = 0;
    int chunked = 0, close_it = (memcmp(sp2 + 1, "HTTP/1.0", 8) == 0);
    for (char *line = memchr(c->in.p, '\n', hlen) + 1; line < hend;) {
      char *eol = memmem(line, hend + 2 - line, "\r\n", 2);
      if (!eol) break;
      if (strncasecmp(line, "content-length:", 15) == 0) clen = strtol(line + 15, NULL, 10);
      else if (strncasecmp(line, "transfer-encoding:", 18) == 0 && memmem(line, eol - line, "chunked", 7)) chunked = 1;
      else if (strncasecmp(line, "connection:", 11) == 0) {
        for (char *p = line + 11; p < eol; p++)
          if (strncasecmp(p, "close", 5) == 0) close_it = 1;
          else if (strncasecmp(p, "keep-alive", 10) == 0) close_it = 0;
      }
      line = eol + 2;
    }
    size_t body_len = clen, used;
    char *body = c->in.p + hlen;
    if (chunked) {
      long got = dechunk(body, c->in.len - hlen, &body_len);
      if (got < 0) return -1;
      if (got == 0) return c->in.len > MAX_IN ? -1 : 0;
      used = hlen + got;
    } else {
      if (clen < 0 || clen > MAX_IN) return -1;
      if (c->in.len < hlen + clen) return 0;
      used = hlen + clen;
    }
    char method[8] = {0};
    memcpy(method, c->in.p, (sp1 - c->in.p) < 7 ? (sp1 - c->in.p) : 7);
    c->closing = close_it;
    route(c, method, path, plen, body, body_len);
    buf_drop(&c->in, used);
  }
  return 0;
}

static void on_timer(int64_t now) {
  while (heap_n && heap[0]->deadline <= now) {
    conn_t *c = heap[0];
    heap_remove(c);
    advance(c, now);
    if (flush_out(c) < 0) { conn_close(c); continue; }
    if (!c->active && c->in.len && (on_input(c) < 0 || flush_out(c) < 0)) conn_close(c);
  }
}

static int listen_on(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g_port)};
  inet_pton(AF_INET, g_host, &a.sin_addr);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 4096) < 0) {
    perror("mockllm: bind/listen");
    exit(1);
  }
  return fd;
}

static void serve(int lfd) {
  ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}, evs[256];
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  for (;;) {
    int timeout = -1;
    if (heap_n) {
      int64_t d = heap[0]->deadline - now_ms();
      timeout = d < 0 ? 0 : (int)d;
    }
    int n = epoll_wait(ep, evs, 256, timeout);
    for (int i = 0; i < n; i++) {
      conn_t *c = evs[i].data.ptr;
      if (!c) {
        for (;;) {
          int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
          if (fd < 0) break;
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          conn_t *nc = calloc(1, sizeof *nc);
          nc->fd = fd; nc->heap_i = -1;
          struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
        }
        continue;
      }
      if (evs[i].events & EPOLLIN) {
        int dead = 0;
        for (;;) {
          buf_reserve(&c->in, 16384);
          size_t room = c->in.cap - c->in.len;
          ssize_t r = recv(c->fd, c->in.p + c->in.len, room, 0);
          if (r > 0) { c->in.len += r; if ((size_t)r < room) break; continue; }
          if (r < 0 && errno == EINTR) continue;
          if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
          dead = 1; break;
        }
        if (dead || c->in.len > MAX_IN + 65536) { conn_close(c); continue; }
        if (on_input(c) < 0) { conn_close(c); continue; }
      } else if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
        conn_close(c); continue;
      }
      if (flush_out(c) < 0) { conn_close(c); continue; }
    }
    on_timer(now_ms());
  }
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) { fprintf(stderr, "mockllm: %s needs a value\n", a); return 2; }
    if (!strcmp(a, "--host")) g_host = v;
    else if (!strcmp(a, "--port")) g_port = atoi(v);
    else if (!strcmp(a, "--model") && g_nmodels < MAX_MODELS) g_models[g_nmodels++] = v;
    else if (!strcmp(a, "--tokens")) g_tokens = atoi(v);
    else if (!strcmp(a, "--ttft-ms")) g_ttft = atoi(v);
    else if (!strcmp(a, "--delay-ms")) g_delay = atoi(v);
    else if (!strcmp(a, "--max-model-len")) g_max_len = atol(v);
    else if (!strcmp(a, "--workers")) g_workers = atoi(v);
    else { fprintf(stderr, "mockllm: unknown option %s\n", a); return 2; }
    i++;
  }
  if (!g_nmodels) g_models[g_nmodels++] = "mock";
  signal(SIGPIPE, SIG_IGN);
  int lfd = listen_on();
  fprintf(stderr, "mockllm listening on http://%s:%d (workers=%d)\n", g_host, g_port, g_workers);
  if (g_workers <= 1) serve(lfd);
  for (int w = 0; w < g_workers; w++)
    if (fork() == 0) { prctl(PR_SET_PDEATHSIG, SIGTERM); serve(lfd); }
  while (wait(NULL) > 0) {}
  return 0;
}
