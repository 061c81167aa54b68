#include "config.h"

#include "elfcheck.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <keel/error.h>
#include <keel/plugin.h>

/* A file mapped read-only; every offset read from it is checked against len
 * first, because the point of the tool is to look at files nobody vouched
 * for. */
struct image {
    const unsigned char *data;
    size_t len;
};

static bool in_bounds(const struct image *im, uint64_t off, uint64_t size)
{
    return off <= im->len && size <= im->len - off;
}

static bool host_is_little_endian(void)
{
    const uint16_t probe = 1;
    unsigned char first;
    memcpy(&first, &probe, 1);
    return first == 1;
}

static void keep_name(char names[][ELFCHECK_NAME_LEN], size_t *count, const char *name)
{
    if (*count < ELFCHECK_MAX_NAMES)
        snprintf(names[*count], ELFCHECK_NAME_LEN, "%s", name);
    (*count)++;
}

static int check_header(const struct image *im, Elf64_Ehdr *eh, char *err, size_t errlen)
{
    if (im->len < EI_NIDENT || memcmp(im->data, ELFMAG, SELFMAG) != 0) {
        snprintf(err, errlen, "not an ELF file");
        return KEEL_EINVAL;
    }
    if (im->data[EI_CLASS] != ELFCLASS64) {
        snprintf(err, errlen, "not a 64-bit ELF object (only 64-bit plugins can load here)");
        return KEEL_EINVAL;
    }
    int native = host_is_little_endian() ? ELFDATA2LSB : ELFDATA2MSB;
    if (im->data[EI_DATA] != native) {
        snprintf(err, errlen, "ELF byte order differs from this host's");
        return KEEL_EINVAL;
    }
    if (im->len < sizeof *eh) {
        snprintf(err, errlen, "truncated ELF header");
        return KEEL_EINVAL;
    }
    memcpy(eh, im->data, sizeof *eh);
    if (eh->e_type != ET_DYN) {
        snprintf(err, errlen, "not a shared object (ELF type %u)", (unsigned)eh->e_type);
        return KEEL_EINVAL;
    }
    return 0;
}

static int scan_dynamic(const struct image *im, uint64_t off, uint64_t size,
                        struct elfcheck_result *out, char *err, size_t errlen)
{
    if (!in_bounds(im, off, size)) {
        snprintf(err, errlen, "dynamic segment lies outside the file");
        return KEEL_EINVAL;
    }
    for (uint64_t pos = 0; pos + sizeof(Elf64_Dyn) <= size; pos += sizeof(Elf64_Dyn)) {
        Elf64_Dyn d;
        memcpy(&d, im->data + off + pos, sizeof d);
        if (d.d_tag == DT_NULL)
            break;
        switch (d.d_tag) {
        case DT_FLAGS_1:
            if (d.d_un.d_val & DF_1_NODELETE)
                out->nodelete = true;
            if (d.d_un.d_val & DF_1_NOW)
                out->bind_now = true;
            break;
        case DT_FLAGS:
            if (d.d_un.d_val & DF_STATIC_TLS)
                out->tls = true;
            if (d.d_un.d_val & DF_BIND_NOW)
                out->bind_now = true;
            break;
        case DT_BIND_NOW:
            out->bind_now = true;
            break;
        case DT_INIT_ARRAYSZ:
            out->init_array = (size_t)(d.d_un.d_val / sizeof(Elf64_Addr));
            break;
        case DT_FINI_ARRAYSZ:
            out->fini_array = (size_t)(d.d_un.d_val / sizeof(Elf64_Addr));
            break;
        default:
            break;
        }
    }
    return 0;
}

static int scan_program_headers(const struct image *im, const Elf64_Ehdr *eh,
                                struct elfcheck_result *out, char *err, size_t errlen)
{
    if (eh->e_phnum == 0)
        return 0;
    if (eh->e_phentsize != sizeof(Elf64_Phdr) ||
        !in_bounds(im, eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr))) {
        snprintf(err, errlen, "program headers lie outside the file");
        return KEEL_EINVAL;
    }
    for (unsigned i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, im->data + eh->e_phoff + (uint64_t)i * sizeof ph, sizeof ph);
        if (ph.p_type == PT_TLS) {
            out->tls = true;
        } else if (ph.p_type == PT_DYNAMIC) {
            int rc = scan_dynamic(im, ph.p_offset, ph.p_filesz, out, err, errlen);
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

static bool is_linker_symbol(const char *name)
{
    return strcmp(name, "_init") == 0 || strcmp(name, "_fini") == 0;
}

static void classify_symbol(const Elf64_Sym *s, const char *name, struct elfcheck_result *out)
{
    unsigned bind = ELF64_ST_BIND(s->st_info);
    unsigned type = ELF64_ST_TYPE(s->st_info);
    unsigned vis = ELF64_ST_VISIBILITY(s->st_other);

    if (s->st_shndx == SHN_UNDEF)
        return;
    if (bind == STB_GNU_UNIQUE) {
        keep_name(out->unique, &out->nunique, name);
        return;
    }
    if (bind != STB_GLOBAL && bind != STB_WEAK)
        return;
    if (type != STT_FUNC && type != STT_OBJECT && type != STT_GNU_IFUNC && type != STT_TLS &&
        type != STT_COMMON)
        return;
    if (vis != STV_DEFAULT && vis != STV_PROTECTED)
        return;
    if (strcmp(name, KEEL_PLUGIN_ENTRY_SYMBOL) == 0 && type == STT_FUNC) {
        out->entry_exported = true;
        return;
    }
    if (is_linker_symbol(name))
        return;
    keep_name(out->extra, &out->nextra, name);
}

static int scan_dynsym(const struct image *im, const Elf64_Ehdr *eh, struct elfcheck_result *out,
                       char *err, size_t errlen)
{
    if (eh->e_shnum == 0)
        return 0; /* stripped of section headers: out->has_dynsym stays false */
    if (eh->e_shentsize != sizeof(Elf64_Shdr) ||
        !in_bounds(im, eh->e_shoff, (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr))) {
        snprintf(err, errlen, "section headers lie outside the file");
        return KEEL_EINVAL;
    }
    for (unsigned i = 0; i < eh->e_shnum; i++) {
        Elf64_Shdr sh, strsh;
        memcpy(&sh, im->data + eh->e_shoff + (uint64_t)i * sizeof sh, sizeof sh);
        if (sh.sh_type != SHT_DYNSYM)
            continue;
        if (sh.sh_link >= eh->e_shnum || sh.sh_entsize != sizeof(Elf64_Sym) ||
            !in_bounds(im, sh.sh_offset, sh.sh_size)) {
            snprintf(err, errlen, ".dynsym is malformed");
            return KEEL_EINVAL;
        }
        memcpy(&strsh, im->data + eh->e_shoff + (uint64_t)sh.sh_link * sizeof strsh, sizeof strsh);
        if (!in_bounds(im, strsh.sh_offset, strsh.sh_size) || strsh.sh_size == 0) {
            snprintf(err, errlen, ".dynstr lies outside the file");
            return KEEL_EINVAL;
        }
        const char *strtab = (const char *)im->data + strsh.sh_offset;
        out->has_dynsym = true;
        /* Entry 0 is the reserved null symbol. */
        for (uint64_t k = 1; k < sh.sh_size / sizeof(Elf64_Sym); k++) {
            Elf64_Sym s;
            memcpy(&s, im->data + sh.sh_offset + k * sizeof s, sizeof s);
            if (s.st_name >= strsh.sh_size ||
                memchr(strtab + s.st_name, '\0', strsh.sh_size - s.st_name) == NULL) {
                snprintf(err, errlen, ".dynsym entry %llu has a name outside .dynstr",
                         (unsigned long long)k);
                return KEEL_EINVAL;
            }
            classify_symbol(&s, strtab + s.st_name, out);
        }
    }
    return 0;
}

int elfcheck_file(const char *path, struct elfcheck_result *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return KEEL_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
        snprintf(err, errlen, "%s: not a regular, non-empty file", path);
        close(fd);
        return KEEL_EINVAL;
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int saved = errno;
    close(fd);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "%s: cannot map: %s", path, strerror(saved));
        return KEEL_EIO;
    }
    struct image im = {.data = map, .len = (size_t)st.st_size};
    Elf64_Ehdr eh;
    int rc = check_header(&im, &eh, err, errlen);
    if (rc == 0)
        rc = scan_program_headers(&im, &eh, out, err, errlen);
    if (rc == 0)
        rc = scan_dynsym(&im, &eh, out, err, errlen);
    munmap(map, im.len);
    return rc;
}
