/* vdi-planner: the planner desktop's drawing and timing helper (runs inside the guest, on /dev/fb0).
 *
 * Built static by image_manager.demo_image for the "planner" variant and installed as
 * /opt/planner/bin/vdi-planner. The guest has busybox only: this is the one program that draws pixels
 * and reads CLOCK_MONOTONIC. docs/planner.md ("Guest protocol") defines the watermark layout; the
 * constants below are that layout.
 *
 *   vdi-planner desktop NAME          save the console font, unbind the text console from the framebuffer,
 *                                     paint the desktop (background, title bar with NAME) and zero marks
 *   vdi-planner keepalive             forever: change the keep-alive block every 20 ms
 *   vdi-planner run CODE SEQ PROG [ARG...]
 *                                     draw the start marks, run PROG, draw the end mark; print
 *                                     "ok CODE SEQ MICROSECONDS" or "FAIL CODE SEQ REASON"
 *   vdi-planner text FILE             render FILE's first page of text into the content area
 *   vdi-planner pages N FILE          render N "web pages" (background, image boxes, FILE's text)
 *   vdi-planner type FILE TEXT        type TEXT one character at a time: append to FILE, draw it
 *   vdi-planner frames N FPS          play N frames of a 320x240 "video" at up to FPS frames per second
 *   vdi-planner now                   print CLOCK_MONOTONIC in microseconds
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fb.h>
#include <linux/kd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- watermark layout (docs/planner.md) ---- */
#define MARK_BLOCK_W 16
#define MARK_BLOCK_H 8
#define MARK_BITS 10
#define MARK_BLOCKS (MARK_BITS + 2)            /* framing white, 10 bits, framing black */
#define MARK_REGION_W (MARK_BLOCKS * MARK_BLOCK_W) /* 192 */
#define KEEPALIVE_X MARK_REGION_W               /* 192 */
#define KEEPALIVE_Y 0
#define KEEPALIVE_PERIOD_NS 20000000L
#define CONTENT_Y 32                            /* applications draw at y >= 32 */
#define RUN_LIMIT_S 120                         /* an operation running longer is killed: FAIL timeout */
#define FONT_FILE "/run/vdi-planner-font"
#define GLYPH_W 8
#define GLYPH_H 16

static int fb_fd = -1;
static uint8_t *fb;
static struct fb_var_screeninfo var;
static struct fb_fix_screeninfo fix;
static unsigned bytes_pp;
static uint8_t font[256 * GLYPH_H];
static int have_font;

static void die(const char *what) {
    fprintf(stderr, "vdi-planner: %s: %s\n", what, strerror(errno));
    exit(1);
}

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static void fb_open(void) {
    fb_fd = open("/dev/fb0", O_RDWR);
    if (fb_fd < 0) die("/dev/fb0");
    if (ioctl(fb_fd, FBIOGET_VSCREENINFO, &var) < 0) die("FBIOGET_VSCREENINFO");
    if (ioctl(fb_fd, FBIOGET_FSCREENINFO, &fix) < 0) die("FBIOGET_FSCREENINFO");
    bytes_pp = (var.bits_per_pixel + 7) / 8;
    if (bytes_pp < 2 || bytes_pp > 4) { errno = EINVAL; die("unsupported bits per pixel"); }
    fb = mmap(NULL, fix.smem_len, PROT_READ | PROT_WRITE, MAP_SHARED, fb_fd, 0);
    if (fb == MAP_FAILED) die("mmap /dev/fb0");
}

static uint32_t pixel(uint32_t rgb) {
    uint32_t r = (rgb >> 16) & 0xff, g = (rgb >> 8) & 0xff, b = rgb & 0xff;
    return ((r >> (8 - var.red.length)) << var.red.offset) | ((g >> (8 - var.green.length)) << var.green.offset)
           | ((b >> (8 - var.blue.length)) << var.blue.offset);
}

static void put(uint8_t *at, uint32_t value) {
    for (unsigned i = 0; i < bytes_pp; i++) at[i] = (uint8_t)(value >> (8 * i));
}

/* Fill a rectangle, clipped to the screen; one row is built once and copied. */
static void fill(int x, int y, int w, int h, uint32_t rgb) {
    if (x < 0) { w += x; x = 0; }
    if (y < 0) { h += y; y = 0; }
    if (x + w > (int)var.xres) w = (int)var.xres - x;
    if (y + h > (int)var.yres) h = (int)var.yres - y;
    if (w <= 0 || h <= 0) return;
    uint8_t row[4096 * 4];
    uint32_t value = pixel(rgb);
    for (int i = 0; i < w; i++) put(row + i * bytes_pp, value);
    for (int j = 0; j < h; j++) memcpy(fb + (size_t)(y + j) * fix.line_length + (size_t)x * bytes_pp, row, (size_t)w * bytes_pp);
}

static void load_font(void) {
    int fd = open(FONT_FILE, O_RDONLY);
    if (fd >= 0) {
        have_font = read(fd, font, sizeof font) == (ssize_t)sizeof font;
        close(fd);
    }
}

/* One 8x16 glyph; without the console's font a dense pattern per character (same pixel cost). */
static void glyph(int x, int y, unsigned char c, uint32_t fg, uint32_t bg) {
    if (x < 0 || y < 0 || x + GLYPH_W > (int)var.xres || y + GLYPH_H > (int)var.yres) return;
    if (x < KEEPALIVE_X + MARK_BLOCK_W && y < 3 * MARK_BLOCK_H) return; /* never over the marks */
    uint32_t f = pixel(fg), b = pixel(bg);
    for (int j = 0; j < GLYPH_H; j++) {
        uint8_t bits = have_font ? font[c * GLYPH_H + j] : (uint8_t)((c == ' ') ? 0 : (c * 37 + j * 11) | 0x18);
        uint8_t *at = fb + (size_t)(y + j) * fix.line_length + (size_t)x * bytes_pp;
        for (int i = 0; i < GLYPH_W; i++, at += bytes_pp) put(at, (bits & (0x80 >> i)) ? f : b);
    }
}

static void text_line(int x, int y, const char *s, size_t n, uint32_t fg, uint32_t bg) {
    for (size_t i = 0; i < n && x + GLYPH_W <= (int)var.xres; i++, x += GLYPH_W) glyph(x, y, (unsigned char)s[i], fg, bg);
}

/* ---- watermarks ---- */
static void mark_line(int line, unsigned value) {
    int y = line * MARK_BLOCK_H;
    fill(0, y, MARK_BLOCK_W, MARK_BLOCK_H, 0xffffff);
    for (int bit = 0; bit < MARK_BITS; bit++) {
        int on = (value >> (MARK_BITS - 1 - bit)) & 1;
        fill((bit + 1) * MARK_BLOCK_W, y, MARK_BLOCK_W, MARK_BLOCK_H, on ? 0xffffff : 0x000000);
    }
    fill((MARK_BLOCKS - 1) * MARK_BLOCK_W, y, MARK_BLOCK_W, MARK_BLOCK_H, 0x000000);
}

static unsigned number(const char *s, unsigned max, const char *what) {
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v > max) {
        fprintf(stderr, "vdi-planner: %s must be a whole number 0-%u, got '%s'\n", what, max, s);
        exit(2);
    }
    return (unsigned)v;
}

/* ---- the desktop ---- */
static void save_console_font(void) {
    static unsigned char buf[512 * 32 * 4];
    struct console_font_op op = {.op = KD_FONT_OP_GET, .width = 32, .height = 32, .charcount = 512, .data = buf};
    int fd = open("/dev/tty0", O_RDWR);
    if (fd < 0 || ioctl(fd, KDFONTOP, &op) < 0 || op.width != GLYPH_W || op.height != GLYPH_H) {
        fprintf(stderr, "vdi-planner: no 8x16 console font (%s); drawing pattern glyphs\n", strerror(errno));
        if (fd >= 0) close(fd);
        return;
    }
    close(fd);
    uint8_t out[256 * GLYPH_H];
    for (int c = 0; c < 256; c++) memcpy(out + c * GLYPH_H, buf + c * 32, GLYPH_H); /* 32 rows reserved per glyph */
    int ff = open(FONT_FILE, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (ff >= 0) {
        if (write(ff, out, sizeof out) != (ssize_t)sizeof out) fprintf(stderr, "vdi-planner: short font write\n");
        close(ff);
    }
}

static void unbind_text_console(void) {
    /* The framebuffer console would draw over the marks: detach it (the VT and its getty stay). */
    char path[64], name[128];
    for (int i = 0; i < 8; i++) {
        snprintf(path, sizeof path, "/sys/class/vtconsole/vtcon%d/name", i);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        int is_fb = fgets(name, sizeof name, f) && strstr(name, "frame buffer");
        fclose(f);
        if (!is_fb) continue;
        snprintf(path, sizeof path, "/sys/class/vtconsole/vtcon%d/bind", i);
        f = fopen(path, "w");
        if (f) { fputs("0\n", f); fclose(f); }
    }
}

static void desktop(const char *name) {
    save_console_font();
    unbind_text_console();
    fb_open();
    load_font();
    fill(0, 0, (int)var.xres, (int)var.yres, 0x3a6ea5);
    fill(0, 0, (int)var.xres, CONTENT_Y, 0x202020);
    char title[160];
    int n = snprintf(title, sizeof title, "VDI planner desktop  %s", name);
    text_line(240, 8, title, (size_t)n, 0xffffff, 0x202020);
    long long t0 = now_us();
    for (int line = 0; line < 3; line++) mark_line(line, 0);
    long long marks_us = now_us() - t0; /* what drawing one operation's marks costs on this guest */
    printf("VDI-PLANNER desktop %ux%u bpp=%u font=%s marks_us=%lld\n", var.xres, var.yres, var.bits_per_pixel,
           have_font ? "console" : "pattern", marks_us);
}

static void keepalive(void) {
    static const uint32_t greys[4] = {0x404040, 0x808080, 0xc0c0c0, 0x606060};
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (unsigned i = 0;; i++) {
        fill(KEEPALIVE_X, KEEPALIVE_Y, MARK_BLOCK_W, MARK_BLOCK_H, greys[i % 4]);
        next.tv_nsec += KEEPALIVE_PERIOD_NS;
        if (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
}

/* ---- running one operation ---- */
static int run(unsigned code, unsigned seq, char **argv) {
    mark_line(2, 0);
    mark_line(0, code);
    mark_line(1, seq);
    /* SIGCHLD blocked: the parent sleeps in sigtimedwait until the child ends (no polling to load the guest) */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    long long t0 = now_us();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        sigprocmask(SIG_UNBLOCK, &chld, NULL);
        int null = open("/dev/null", O_RDWR);
        if (null >= 0) { dup2(null, 0); dup2(null, 1); dup2(null, 2); }
        execv(argv[0], argv);
        _exit(127);
    }
    int status = 0, timed_out = 0;
    long long limit = t0 + RUN_LIMIT_S * 1000000LL;
    for (;;) {
        pid_t done = waitpid(pid, &status, WNOHANG);
        if (done == pid) break;
        if (done < 0 && errno != EINTR) die("waitpid");
        long long left = limit - now_us();
        if (left <= 0) { kill(pid, SIGKILL); waitpid(pid, &status, 0); timed_out = 1; break; }
        struct timespec wait_for = {left / 1000000, (left % 1000000) * 1000};
        sigtimedwait(&chld, NULL, &wait_for);
    }
    long long t1 = now_us();
    mark_line(2, 1000 - seq);
    if (timed_out) printf("FAIL %u %u timeout after %d s\n", code, seq, RUN_LIMIT_S);
    else if (WIFSIGNALED(status)) printf("FAIL %u %u signal %d\n", code, seq, WTERMSIG(status));
    else if (WEXITSTATUS(status) != 0) printf("FAIL %u %u exit %d\n", code, seq, WEXITSTATUS(status));
    else printf("ok %u %u %lld\n", code, seq, t1 - t0);
    return 0;
}

/* ---- application drawing ---- */
static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    size_t cap = 1 << 16, n = 0;
    char *data = malloc(cap);
    size_t got;
    while (data && (got = fread(data + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) data = realloc(data, cap *= 2);
    }
    fclose(f);
    if (!data) die("memory");
    *len = n;
    return data;
}

/* Render text lines from data into the box; returns how many bytes it consumed. */
static size_t render_text(const char *data, size_t len, int x, int y, int w, int h, uint32_t fg, uint32_t bg) {
    size_t pos = 0;
    int cols = w / GLYPH_W;
    for (int row = 0; row + 1 <= h / GLYPH_H && pos < len; row++) {
        size_t end = pos;
        while (end < len && data[end] != '\n' && (int)(end - pos) < cols) end++;
        fill(x, y + row * GLYPH_H, w, GLYPH_H, bg);
        text_line(x, y + row * GLYPH_H, data + pos, end - pos, fg, bg);
        pos = (end < len && data[end] == '\n') ? end + 1 : end;
    }
    return pos;
}

static void text(const char *path) {
    size_t len;
    char *data = slurp(path, &len);
    fill(16, CONTENT_Y + 16, (int)var.xres - 32, (int)var.yres - CONTENT_Y - 32, 0xffffff);
    render_text(data, len, 32, CONTENT_Y + 32, (int)var.xres - 64, (int)var.yres - CONTENT_Y - 64, 0x000000, 0xffffff);
    free(data);
}

static void pages(unsigned count, const char *path) {
    size_t len, pos = 0;
    char *data = slurp(path, &len);
    for (unsigned p = 0; p < count; p++) {
        uint32_t bg = p % 2 ? 0xf4f4f0 : 0xffffff;
        fill(0, CONTENT_Y, (int)var.xres, (int)var.yres - CONTENT_Y, bg);
        fill(0, CONTENT_Y, (int)var.xres, 24, 0xd0d0d8); /* the address bar */
        /* three "images": gradients computed per pixel */
        for (int box = 0; box < 3; box++) {
            int bx = 32 + box * 330, by = CONTENT_Y + 48, bw = 300, bh = 200;
            for (int j = 0; j < bh; j++) {
                uint8_t *at = fb + (size_t)(by + j) * fix.line_length + (size_t)bx * bytes_pp;
                for (int i = 0; i < bw; i++, at += bytes_pp)
                    put(at, pixel(((uint32_t)(i + p * 40) & 0xff) << 16 | ((uint32_t)(j + box * 60) & 0xff) << 8 | 0x80));
            }
        }
        pos += render_text(data + pos % len, len - pos % len, 32, CONTENT_Y + 272, (int)var.xres - 64,
                           (int)var.yres - CONTENT_Y - 288, 0x101010, bg);
    }
    free(data);
}

static void type(const char *path, const char *typed) {
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0) die(path);
    int x0 = 32, y0 = (int)var.yres - 96, cols = ((int)var.xres - 64) / GLYPH_W;
    fill(16, y0 - 16, (int)var.xres - 32, 80, 0xffffe0);
    for (size_t i = 0; typed[i]; i++) {
        if (write(fd, typed + i, 1) != 1) die(path);
        glyph(x0 + (int)(i % cols) * GLYPH_W, y0 + (int)(i / cols) * GLYPH_H, (unsigned char)typed[i], 0x000000, 0xffffe0);
    }
    if (write(fd, "\n", 1) != 1) die(path);
    close(fd);
}

static void frames(unsigned count, unsigned fps) {
    int w = 320, h = 240, x0 = ((int)var.xres - w) / 2, y0 = CONTENT_Y + ((int)var.yres - CONTENT_Y - h) / 2;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long period = fps ? 1000000000L / fps : 0;
    for (unsigned f = 0; f < count; f++) {
        for (int j = 0; j < h; j++) {
            uint8_t *at = fb + (size_t)(y0 + j) * fix.line_length + (size_t)x0 * bytes_pp;
            for (int i = 0; i < w; i++, at += bytes_pp)
                put(at, pixel((uint32_t)((i + f * 8) & 0xff) << 16 | (uint32_t)((j + f * 4) & 0xff) << 8
                              | (((uint32_t)(i ^ j) + f) & 0xff)));
        }
        if (period) {
            next.tv_nsec += period;
            while (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        }
    }
}

static int usage(void) {
    fprintf(stderr, "usage: vdi-planner desktop NAME | keepalive | run CODE SEQ PROG [ARG...]"
                    " | text FILE | pages N FILE | type FILE TEXT | frames N FPS | now\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    const char *cmd = argv[1];
    if (!strcmp(cmd, "now") && argc == 2) { printf("%lld\n", now_us()); return 0; }
    if (!strcmp(cmd, "desktop") && argc == 3) { desktop(argv[2]); return 0; }
    if (!strcmp(cmd, "run") && argc >= 5) {
        unsigned code = number(argv[2], 1023, "CODE"), seq = number(argv[3], 999, "SEQ");
        if (seq == 0) { fprintf(stderr, "vdi-planner: SEQ must be 1-999\n"); return 2; }
        fb_open();
        return run(code, seq, argv + 4);
    }
    int known = (!strcmp(cmd, "keepalive") && argc == 2) || (!strcmp(cmd, "text") && argc == 3) || (!strcmp(cmd, "pages") && argc == 4)
                || (!strcmp(cmd, "type") && argc == 4) || (!strcmp(cmd, "frames") && argc == 4);
    if (!known) return usage();
    fb_open();
    load_font();
    if (!strcmp(cmd, "keepalive")) keepalive();
    else if (!strcmp(cmd, "text")) text(argv[2]);
    else if (!strcmp(cmd, "pages")) pages(number(argv[2], 100, "N"), argv[3]);
    else if (!strcmp(cmd, "type")) type(argv[2], argv[3]);
    else if (!strcmp(cmd, "frames")) frames(number(argv[2], 10000, "N"), number(argv[3], 120, "FPS"));
    else return usage();
    return 0;
}
