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

static bool has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* An undefined reference into a sanitizer runtime. */
static bool is_sanitizer_symbol(const char *name)
{
    return has_prefix(name, "__asan_") || has_prefix(name, "__tsan_") ||
           has_prefix(name, "__msan_") || has_prefix(name, "__hwasan_");
}

/* Constructors and destructors the toolchain adds by itself: crtbegin's, and
 * a sanitizer's per-module ones (GCC names them _sub_I_00099_N, priority 99
 * being the one reserved for sanitizers; clang asan.module_ctor). */
static bool is_allowed_init(const char *name, bool sanitized)
{
    static const char *const sanitizer_prefixes[] = {
        "_sub_I_00099_",    "_sub_D_00099_",      "_GLOBAL__sub_I_00099_", "_GLOBAL__sub_D_00099_",
        "asan.module_ctor", "asan.module_dtor",   "tsan.module_ctor",      "tsan.module_dtor",
        "msan.module_ctor", "hwasan.module_ctor",
    };
    if (strcmp(name, "frame_dummy") == 0 || strcmp(name, "__do_global_dtors_aux") == 0)
        return true;
    if (!sanitized)
        return false;
    for (size_t i = 0; i < sizeof sanitizer_prefixes / sizeof sanitizer_prefixes[0]; i++)
        if (has_prefix(name, sanitizer_prefixes[i]))
            return true;
    return false;
}

static void classify_symbol(const Elf64_Sym *s, const char *name, struct elfcheck_result *out)
{
    unsigned bind = ELF64_ST_BIND(s->st_info);
    unsigned type = ELF64_ST_TYPE(s->st_info);
    unsigned vis = ELF64_ST_VISIBILITY(s->st_other);

    if (s->st_shndx == SHN_UNDEF) {
        if (is_sanitizer_symbol(name))
            out->sanitized = true;
        return;
    }
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
    /* ASan's ODR indicators shadow exported globals, which are reported
     * under their own names. */
    if (is_linker_symbol(name) || has_prefix(name, "__odr_asan"))
        return;
    keep_name(out->extra, &out->nextra, name);
}

/* A symbol table section (.dynsym or .symtab) with its string table, checked
 * to lie inside the file. */
struct symtab {
    bool present;
    uint64_t off, count;
    uint64_t stroff, strsize;
};

static Elf64_Shdr section(const struct image *im, const Elf64_Ehdr *eh, unsigned i)
{
    Elf64_Shdr sh;
    memcpy(&sh, im->data + eh->e_shoff + (uint64_t)i * sizeof sh, sizeof sh);
    return sh;
}

static int load_symtab(const struct image *im, const Elf64_Ehdr *eh, const Elf64_Shdr *sh,
                       struct symtab *t, char *err, size_t errlen)
{
    if (sh->sh_link >= eh->e_shnum || sh->sh_entsize != sizeof(Elf64_Sym) ||
        !in_bounds(im, sh->sh_offset, sh->sh_size)) {
        snprintf(err, errlen, "a symbol table is malformed");
        return KEEL_EINVAL;
    }
    Elf64_Shdr strsh = section(im, eh, sh->sh_link);
    if (!in_bounds(im, strsh.sh_offset, strsh.sh_size) || strsh.sh_size == 0) {
        snprintf(err, errlen, "a string table lies outside the file");
        return KEEL_EINVAL;
    }
    t->present = true;
    t->off = sh->sh_offset;
    t->count = sh->sh_size / sizeof(Elf64_Sym);
    t->stroff = strsh.sh_offset;
    t->strsize = strsh.sh_size;
    return 0;
}

/* Reads symbol k; *name is NULL when its name lies outside the string table. */
static Elf64_Sym read_symbol(const struct image *im, const struct symtab *t, uint64_t k,
                             const char **name)
{
    Elf64_Sym s;
    memcpy(&s, im->data + t->off + k * sizeof s, sizeof s);
    const char *strtab = (const char *)im->data + t->stroff;
    *name = s.st_name < t->strsize &&
                    memchr(strtab + s.st_name, '\0', t->strsize - s.st_name) != NULL
                ? strtab + s.st_name
                : NULL;
    return s;
}

/* The name of the function defined at addr, or NULL. */
static const char *function_at(const struct image *im, const struct symtab *t, uint64_t addr)
{
    for (uint64_t k = 1; t->present && k < t->count; k++) {
        const char *name;
        Elf64_Sym s = read_symbol(im, t, k, &name);
        if (name != NULL && *name != '\0' && ELF64_ST_TYPE(s.st_info) == STT_FUNC &&
            s.st_shndx != SHN_UNDEF && s.st_value == addr)
            return name;
    }
    return NULL;
}

/* Where the pointer stored at addr will point once relocated: the addend of
 * its RELA relocation (relative, or symbol + addend), else what the file
 * holds there (REL and RELR keep the value in place). */
static uint64_t relocated_value(const struct image *im, const Elf64_Ehdr *eh,
                                const struct symtab *dynsym, uint64_t addr, uint64_t in_place)
{
    for (unsigned i = 0; i < eh->e_shnum; i++) {
        Elf64_Shdr sh = section(im, eh, i);
        if (sh.sh_type != SHT_RELA || sh.sh_entsize != sizeof(Elf64_Rela) ||
            !in_bounds(im, sh.sh_offset, sh.sh_size))
            continue;
        for (uint64_t off = 0; off + sizeof(Elf64_Rela) <= sh.sh_size; off += sizeof(Elf64_Rela)) {
            Elf64_Rela r;
            memcpy(&r, im->data + sh.sh_offset + off, sizeof r);
            if (r.r_offset != addr)
                continue;
            uint64_t sym = ELF64_R_SYM(r.r_info);
            if (sym == 0)
                return (uint64_t)r.r_addend;
            if (dynsym->present && sym < dynsym->count) {
                const char *name;
                Elf64_Sym s = read_symbol(im, dynsym, sym, &name);
                return s.st_value + (uint64_t)r.r_addend;
            }
            return in_place;
        }
    }
    return in_place;
}

/* Names the entries of one .init_array/.fini_array section; entries that
 * are neither the toolchain's nor named go into names/count.  Returns false
 * when some entry could not be named. */
static bool scan_array(const struct image *im, const Elf64_Ehdr *eh, const Elf64_Shdr *sh,
                       const struct symtab *symtab, const struct symtab *dynsym, bool sanitized,
                       char names[][ELFCHECK_NAME_LEN], size_t *count)
{
    bool all_named = true;
    for (uint64_t k = 0; k < sh->sh_size / sizeof(Elf64_Addr); k++) {
        uint64_t in_place = 0;
        uint64_t foff = sh->sh_offset + k * sizeof(Elf64_Addr);
        if (sh->sh_type != SHT_NOBITS && in_bounds(im, foff, sizeof(Elf64_Addr)))
            memcpy(&in_place, im->data + foff, sizeof in_place);
        uint64_t target = relocated_value(im, eh, dynsym, sh->sh_addr + k * sizeof(Elf64_Addr),
                                          in_place);
        const char *name = function_at(im, symtab, target);
        if (name == NULL)
            name = function_at(im, dynsym, target);
        if (name == NULL) {
            all_named = false;
            continue;
        }
        if (!is_allowed_init(name, sanitized))
            keep_name(names, count, name);
    }
    return all_named;
}

static int scan_sections(const struct image *im, const Elf64_Ehdr *eh, struct elfcheck_result *out,
                         char *err, size_t errlen)
{
    if (eh->e_shnum == 0)
        return 0; /* stripped of section headers: nothing below can be checked */
    if (eh->e_shentsize != sizeof(Elf64_Shdr) ||
        !in_bounds(im, eh->e_shoff, (uint64_t)eh->e_shnum * sizeof(Elf64_Shdr))) {
        snprintf(err, errlen, "section headers lie outside the file");
        return KEEL_EINVAL;
    }
    struct symtab dynsym = {0}, symtab = {0};
    for (unsigned i = 0; i < eh->e_shnum; i++) {
        Elf64_Shdr sh = section(im, eh, i);
        int rc = 0;
        if (sh.sh_type == SHT_DYNSYM && !dynsym.present)
            rc = load_symtab(im, eh, &sh, &dynsym, err, errlen);
        else if (sh.sh_type == SHT_SYMTAB && !symtab.present)
            rc = load_symtab(im, eh, &sh, &symtab, err, errlen);
        if (rc != 0)
            return rc;
    }

    out->has_dynsym = dynsym.present;
    /* Entry 0 is the reserved null symbol. */
    for (uint64_t k = 1; k < dynsym.count; k++) {
        const char *name;
        Elf64_Sym s = read_symbol(im, &dynsym, k, &name);
        if (name == NULL) {
            snprintf(err, errlen, ".dynsym entry %llu has a name outside .dynstr",
                     (unsigned long long)k);
            return KEEL_EINVAL;
        }
        classify_symbol(&s, name, out);
    }

    /* Constructors and destructors by name (needs the sanitizer verdict
     * from .dynsym above). */
    bool named = symtab.present || dynsym.present;
    size_t seen_init = 0, seen_fini = 0;
    for (unsigned i = 0; i < eh->e_shnum; i++) {
        Elf64_Shdr sh = section(im, eh, i);
        if (sh.sh_type == SHT_INIT_ARRAY) {
            seen_init += sh.sh_size / sizeof(Elf64_Addr);
            named &= scan_array(im, eh, &sh, &symtab, &dynsym, out->sanitized, out->ctors,
                                &out->nctors);
        } else if (sh.sh_type == SHT_FINI_ARRAY) {
            seen_fini += sh.sh_size / sizeof(Elf64_Addr);
            named &= scan_array(im, eh, &sh, &symtab, &dynsym, out->sanitized, out->dtors,
                                &out->ndtors);
        }
    }
    /* The sections must account for what the dynamic section announces. */
    out->names_known = named && seen_init == out->init_array && seen_fini == out->fini_array;
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
        rc = scan_sections(&im, &eh, out, err, errlen);
    munmap(map, im.len);
    return rc;
}
