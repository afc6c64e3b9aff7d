package manager

import (
	"encoding/json"
	"testing"

	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

func TestMergeConfig(t *testing.T) {
	two := 2
	base := apitypes.TemplateConfig{
		Vcpu: &two, KernelImageID: "k", RootfsImageID: "r", BootArgs: "console=ttyS0",
		ExtraDrives: []apitypes.ExtraDrive{{DriveID: "data", ImageID: "d"}},
	}
	for _, tc := range []struct {
		name, over, want string
	}{
		{"nothing", `{}`, `{"vcpu":2,"kernel_image_id":"k","rootfs_image_id":"r","boot_args":"console=ttyS0","extra_drives":[{"drive_id":"data","image_id":"d"}]}`},
		{"scalars", `{"vcpu":4,"mem_mib":256,"boot_args":"quiet"}`, `{"vcpu":4,"mem_mib":256,"kernel_image_id":"k","rootfs_image_id":"r","boot_args":"quiet","extra_drives":[{"drive_id":"data","image_id":"d"}]}`},
		{"drives replace as a whole", `{"extra_drives":[{"drive_id":"logs","image_id":"l","read_only":true}]}`, `{"vcpu":2,"kernel_image_id":"k","rootfs_image_id":"r","boot_args":"console=ttyS0","extra_drives":[{"drive_id":"logs","image_id":"l","read_only":true}]}`},
		{"nic", `{"nic":{"disabled":true}}`, `{"vcpu":2,"kernel_image_id":"k","rootfs_image_id":"r","boot_args":"console=ttyS0","extra_drives":[{"drive_id":"data","image_id":"d"}],"nic":{"disabled":true}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var over apitypes.TemplateConfig
			if err := json.Unmarshal([]byte(tc.over), &over); err != nil {
				t.Fatal(err)
			}
			got, _ := json.Marshal(mergeConfig(base, over))
			if string(got) != tc.want {
				t.Errorf("mergeConfig(base, %s) = %s; want %s", tc.over, got, tc.want)
			}
		})
	}
	if *base.Vcpu != 2 || len(base.ExtraDrives) != 1 || base.ExtraDrives[0].DriveID != "data" {
		t.Fatal("mergeConfig changed the template's config")
	}
}

func TestSizeText(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 1 << 30: "1.0 GiB", 5 << 40: "5.0 TiB"} {
		if got := sizeText(n); got != want {
			t.Errorf("sizeText(%d) = %q; want %q", n, got, want)
		}
	}
}
