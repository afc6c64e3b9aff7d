package fcsim

import (
	"encoding/binary"
	"io"
)

// kernelLoaderFault is firecracker's InstanceStart error for a kernel that
// linux-loader cannot load as an ELF image (x86_64).
const kernelLoaderFault = "Start microvm error: System configuration error: Cannot load kernel due to " +
	"invalid memory configuration or invalid kernel image: Kernel Loader: failed to load ELF kernel image"

// checkELFKernel applies the checks linux-loader's ELF loader makes before
// it copies segments: the ELF magic, 64-bit little-endian, a program header
// table of Elf64_Phdr entries and at least one PT_LOAD segment inside the
// file.
func checkELFKernel(r io.ReaderAt, size int64) bool {
	var eh [64]byte
	if size < int64(len(eh)) {
		return false
	}
	if _, err := r.ReadAt(eh[:], 0); err != nil {
		return false
	}
	if string(eh[:4]) != "\x7fELF" || eh[4] != 2 /* ELFCLASS64 */ || eh[5] != 1 /* ELFDATA2LSB */ {
		return false
	}
	le := binary.LittleEndian
	phoff := le.Uint64(eh[32:])
	phentsize := le.Uint16(eh[54:])
	phnum := le.Uint16(eh[56:])
	if phentsize != 56 || phnum == 0 || phoff == 0 || phoff+uint64(phnum)*56 > uint64(size) {
		return false
	}
	ph := make([]byte, int(phnum)*56)
	if _, err := r.ReadAt(ph, int64(phoff)); err != nil {
		return false
	}
	for i := 0; i < int(phnum); i++ {
		p := ph[i*56:]
		if le.Uint32(p) == 1 /* PT_LOAD */ && le.Uint64(p[8:])+le.Uint64(p[32:]) <= uint64(size) {
			return true
		}
	}
	return false
}
