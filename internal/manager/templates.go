package manager

// Templates: saved, named VM configurations that reference registered
// images only. Instantiating one makes VMs that record the template's id,
// its configuration at that moment and the caller's overrides, so a VM
// keeps working when its template is deleted.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// MaxInstances is the most VMs one instantiation makes.
const MaxInstances = 100

func decodeTemplateConfig(t store.Template) (apitypes.TemplateConfig, error) {
	var c apitypes.TemplateConfig
	if len(t.Config) == 0 {
		return c, nil
	}
	if err := json.Unmarshal(t.Config, &c); err != nil {
		return c, fmt.Errorf("template %s: stored config: %w", t.ID, err)
	}
	return c, nil
}

// TemplateView renders a template for the API.
func TemplateView(t store.Template) apitypes.Template {
	c, _ := decodeTemplateConfig(t)
	return apitypes.Template{ID: t.ID, Name: t.Name, Project: t.Project, Owner: t.Owner, Config: c, Version: t.Version, CreatedAt: t.CreatedAt}
}

// CreateTemplate validates and stores a template. Image references may be
// ids or names and are stored as ids; the images must exist and be usable
// by the template's project. id may be empty (the store picks one).
func (s *Templates) CreateTemplate(ctx context.Context, scope Scope, id, owner string, req apitypes.CreateTemplateRequest) (store.Template, error) {
	if !nameRE.MatchString(req.Name) {
		return store.Template{}, invalid("template name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Name)
	}
	project := s.defaultProject(scope, req.Project)
	if project == apitypes.SharedProject || !scope.Sees(project) {
		return store.Template{}, newErr(KindForbidden, "forbidden", "this token cannot create templates in project %q", project).
			suggest("omit project, or use a token of that project")
	}
	if req.Config.KernelImageID == "" {
		return store.Template{}, invalid("config.kernel_image_id is required: templates boot from registered images").
			suggest("list the kernels: nexus image ls --kind kernel")
	}
	cfg, err := s.checkTemplateConfig(ctx, project, "config", req.Config)
	if err != nil {
		return store.Template{}, err
	}
	raw, err := marshal(cfg)
	if err != nil {
		return store.Template{}, err
	}
	t, err := s.st.CreateTemplate(ctx, store.Template{ID: id, Name: req.Name, Project: project, Owner: owner, Config: raw})
	if errors.Is(err, store.ErrConflict) {
		return store.Template{}, nameTaken("a template", req.Name, project)
	}
	if err != nil {
		return store.Template{}, fmt.Errorf("create template %s: %w", req.Name, err)
	}
	return t, nil
}

// checkTemplateConfig normalises image references to ids and validates c
// as a VM configuration of project: images exist, are visible and of the
// right kind, vCPU and memory are sane, drives have valid, distinct ids.
// where names c in errors ("config", "overrides").
func (s *Templates) checkTemplateConfig(ctx context.Context, project, where string, c apitypes.TemplateConfig) (apitypes.TemplateConfig, error) {
	if c.Vcpu != nil {
		if err := checkVcpu(where+".vcpu", *c.Vcpu); err != nil {
			return c, err
		}
	}
	if c.MemMib != nil {
		if err := checkMem(where+".mem_mib", *c.MemMib); err != nil {
			return c, err
		}
	}
	if err := checkBootArgs(where+".boot_args", c.BootArgs); err != nil {
		return c, err
	}
	if err := checkCommandLine(where+".boot_args", c.BootArgs, c.RootfsImageID != "", c.NIC == nil || !c.NIC.Disabled); err != nil {
		return c, err
	}
	scope := Scope{Project: project}
	ref := func(field, r string, kind store.ImageKind) (string, error) {
		if r == "" {
			return "", nil
		}
		img, err := s.images.GetImage(ctx, scope, r, project)
		if err != nil {
			return "", err
		}
		if img.Kind != kind {
			return "", invalid("%s.%s: image %s is a %s image, not a %s", where, field, img.Name, img.Kind, kind)
		}
		return img.ID, nil
	}
	var err error
	if c.KernelImageID, err = ref("kernel_image_id", c.KernelImageID, store.ImageKernel); err != nil {
		return c, err
	}
	if c.InitrdImageID, err = ref("initrd_image_id", c.InitrdImageID, store.ImageInitrd); err != nil {
		return c, err
	}
	if c.RootfsImageID, err = ref("rootfs_image_id", c.RootfsImageID, store.ImageRootfs); err != nil {
		return c, err
	}
	drives := make([]apitypes.ExtraDrive, len(c.ExtraDrives))
	for i, d := range c.ExtraDrives {
		field := fmt.Sprintf("extra_drives[%d]", i)
		if d.Path != "" {
			return c, invalid("%s.%s.path: templates reference registered images, not host paths", where, field).
				suggest("register the file (nexus image add) and give its image_id")
		}
		if d.ImageID == "" {
			return c, invalid("%s.%s.image_id is required", where, field)
		}
		if d.ImageID, err = ref(field+".image_id", d.ImageID, store.ImageRootfs); err != nil {
			return c, err
		}
		drives[i] = d
	}
	if c.ExtraDrives != nil {
		c.ExtraDrives = drives
	}
	return c, nil
}

// validateFull runs the checks CreateVM will run, without creating.
func (s *Templates) validateFull(ctx context.Context, project string, c apitypes.TemplateConfig) error {
	_, err := s.vms.resolveConfig(ctx, project, vmConfig(c))
	return err
}

func vmConfig(c apitypes.TemplateConfig) apitypes.VMConfig {
	return apitypes.VMConfig{
		Vcpu: c.Vcpu, MemMib: c.MemMib, KernelImageID: c.KernelImageID, InitrdImageID: c.InitrdImageID, RootfsImageID: c.RootfsImageID,
		BootArgs: c.BootArgs, ExtraDrives: append([]apitypes.ExtraDrive(nil), c.ExtraDrives...), NIC: c.NIC,
	}
}

// mergeConfig applies overrides to a template's config: each field given
// replaces the template's (extra_drives and nic as a whole).
func mergeConfig(base, over apitypes.TemplateConfig) apitypes.TemplateConfig {
	out := base
	if over.Vcpu != nil {
		out.Vcpu = over.Vcpu
	}
	if over.MemMib != nil {
		out.MemMib = over.MemMib
	}
	if over.KernelImageID != "" {
		out.KernelImageID = over.KernelImageID
	}
	if over.InitrdImageID != "" {
		out.InitrdImageID = over.InitrdImageID
	}
	if over.RootfsImageID != "" {
		out.RootfsImageID = over.RootfsImageID
	}
	if over.BootArgs != "" {
		out.BootArgs = over.BootArgs
	}
	if len(over.ExtraDrives) > 0 {
		out.ExtraDrives = over.ExtraDrives
	}
	if over.NIC != nil {
		out.NIC = over.NIC
	}
	return out
}

// ListTemplates returns the templates the scope sees (in project, when
// given).
func (s *Templates) ListTemplates(ctx context.Context, scope Scope, project string) ([]store.Template, error) {
	p, ok := scope.filterProject(project)
	if !ok {
		return nil, nil
	}
	ts, err := s.st.ListTemplates(ctx, store.TemplateFilter{Project: p})
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	return ts, nil
}

// GetTemplate finds a template by id, or by name in project (default: the
// scope's own).
func (s *Templates) GetTemplate(ctx context.Context, scope Scope, ref, project string) (store.Template, error) {
	t, err := s.st.GetTemplate(ctx, ref)
	if err == nil && scope.Sees(t.Project) {
		return t, nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return store.Template{}, fmt.Errorf("get template %s: %w", ref, err)
	}
	if p := s.defaultProject(scope, project); scope.Sees(p) {
		t, err = s.st.GetTemplateByName(ctx, p, ref)
		if err == nil {
			return t, nil
		}
		if !errors.Is(err, store.ErrNotFound) {
			return store.Template{}, fmt.Errorf("get template %s: %w", ref, err)
		}
	}
	return store.Template{}, notFound("template", ref).suggest("list the templates: nexus template ls")
}

// DeleteTemplate removes a template. VMs made from it keep running and
// restarting: they hold their own configuration.
func (s *Templates) DeleteTemplate(ctx context.Context, scope Scope, ref, project string) (store.Template, error) {
	t, err := s.GetTemplate(ctx, scope, ref, project)
	if err != nil {
		return t, err
	}
	if err := s.st.DeleteTemplate(ctx, t.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
		return t, fmt.Errorf("delete template %s: %w", t.ID, err)
	}
	return t, nil
}

// TemplateInstanceOptions tune Instantiate.
type TemplateInstanceOptions struct {
	// FirstID is the first VM's id (the API picks it so the audit row of
	// the call names it); empty picks one. The others get fresh ids.
	FirstID string
	// Wait answers once every VM runs.
	Wait bool
	// PoolID puts the VMs into a warm pool (pools.go).
	PoolID string
	// Version is the template version to make the VMs of (0: the
	// current one). A pool makes its VMs of the version it records.
	Version int
}

// Instantiate makes req.Count VMs (default 1) from a template, named
// req.Name, or req.Name-1 … req.Name-N with a count. It is all or
// nothing: everything is validated before the first VM is made, and if
// one VM cannot be made (or, when waiting, does not boot), the VMs the
// call made are deleted again and the error names the one that failed.
func (s *Templates) Instantiate(ctx context.Context, scope Scope, ref, project string, req apitypes.InstantiateRequest, opt TemplateInstanceOptions) ([]store.VM, error) {
	t, err := s.GetTemplate(ctx, scope, ref, project)
	if err != nil {
		return nil, err
	}
	if opt.Version != 0 && opt.Version != t.Version {
		v, err := s.st.GetTemplateVersion(ctx, t.ID, opt.Version)
		if errors.Is(err, store.ErrNotFound) {
			return nil, notFound("template version", fmt.Sprintf("%s@%d", t.Name, opt.Version))
		}
		if err != nil {
			return nil, fmt.Errorf("template %s version %d: %w", t.ID, opt.Version, err)
		}
		t.Config, t.Version = v.Config, v.Version
	}
	if _, _, err := parseTTL(s.now(), req.Expiry); err != nil {
		return nil, err
	}
	names, err := batchNames(req.Name, req.Count)
	if err != nil {
		return nil, err
	}
	count := len(names)
	base, err := decodeTemplateConfig(t)
	if err != nil {
		return nil, err
	}
	var over apitypes.TemplateConfig
	if req.Overrides != nil {
		if over, err = s.checkTemplateConfig(ctx, t.Project, "overrides", *req.Overrides); err != nil {
			return nil, err
		}
	}
	merged := mergeConfig(base, over)
	if merged, err = s.checkTemplateConfig(ctx, t.Project, "config", merged); err != nil {
		return nil, err
	}
	if err := s.validateFull(ctx, t.Project, merged); err != nil {
		return nil, err
	}
	for _, n := range names {
		if _, err := s.st.GetVMByName(ctx, t.Project, n); err == nil {
			return nil, conflict("name_taken", "a VM named %q already exists in project %q", n, t.Project).
				suggest("pick another name, or delete the existing VM; nothing was created")
		}
	}
	overJSON, err := marshal(over)
	if err != nil {
		return nil, err
	}
	ids := make([]string, count)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	if opt.FirstID != "" {
		if !hostlayout.ValidVMID(opt.FirstID) {
			return nil, invalid("invalid vm id %q", opt.FirstID)
		}
		ids[0] = opt.FirstID
	}
	return s.createAll(ctx, scope, t, names, ids, merged, req.Tags, req.Expiry, overJSON, opt)
}

// createAll makes the VMs a few at a time; after the first failure it
// starts no more, waits for those under way, and deletes every VM of the
// call.
func (s *Templates) createAll(ctx context.Context, scope Scope, t store.Template, names, ids []string, cfg apitypes.TemplateConfig,
	tags map[string]string, expiry apitypes.Expiry, overrides []byte, opt TemplateInstanceOptions) ([]store.VM, error) {
	vms := make([]store.VM, len(names))
	errs := runBatch(len(names), func(i int) (err error) {
		vms[i], err = s.vms.CreateVM(ctx, scope, apitypes.CreateVMRequest{
			Name: names[i], VMConfig: vmConfig(cfg), Project: t.Project, Tags: tags, Expiry: expiry,
		}, CreateOptions{ID: ids[i], Wait: opt.Wait, TemplateID: t.ID, TemplateVersion: t.Version, TemplateConfig: t.Config, Overrides: overrides, PoolID: opt.PoolID})
		return err
	})
	if err := s.vms.batchFailed(ctx, errs, names, ids, "template "+t.Name); err != nil {
		return nil, err
	}
	return vms, nil
}

// MaxTemplateVersions is the most versions one list answers.
const MaxTemplateVersions = 1000

// UpdateTemplate replaces a template's config, validated like a create's;
// the new config becomes the template's next version and the old versions
// stay. VMs and pools keep the version they were made of.
func (s *Templates) UpdateTemplate(ctx context.Context, scope Scope, ref, project, owner string, req apitypes.UpdateTemplateRequest) (store.Template, error) {
	t, err := s.GetTemplate(ctx, scope, ref, project)
	if err != nil {
		return t, err
	}
	if req.Config.KernelImageID == "" {
		return store.Template{}, invalid("config.kernel_image_id is required: templates boot from registered images").
			suggest("give the whole new config: an update replaces it")
	}
	cfg, err := s.checkTemplateConfig(ctx, t.Project, "config", req.Config)
	if err != nil {
		return store.Template{}, err
	}
	raw, err := marshal(cfg)
	if err != nil {
		return store.Template{}, err
	}
	t, err = s.st.UpdateTemplate(ctx, t.ID, owner, raw)
	if errors.Is(err, store.ErrNotFound) {
		return store.Template{}, notFound("template", ref)
	}
	if err != nil {
		return store.Template{}, fmt.Errorf("update template %s: %w", ref, err)
	}
	return t, nil
}

// TemplateVersionView renders a template version for the API.
func TemplateVersionView(v store.TemplateVersion) apitypes.TemplateVersion {
	c, _ := decodeTemplateConfig(store.Template{ID: v.TemplateID, Config: v.Config})
	return apitypes.TemplateVersion{TemplateID: v.TemplateID, Version: v.Version, Config: c, Owner: v.Owner, CreatedAt: v.CreatedAt}
}

// ListTemplateVersions returns up to limit (1-MaxTemplateVersions)
// versions of a template, newest first, those below before when before > 0,
// and the before of the next page (0: none).
func (s *Templates) ListTemplateVersions(ctx context.Context, scope Scope, ref, project string, before, limit int) ([]store.TemplateVersion, int, error) {
	if limit < 1 || limit > MaxTemplateVersions {
		return nil, 0, invalid("limit must be between 1 and %d", MaxTemplateVersions)
	}
	if before < 0 {
		return nil, 0, invalid("before must be a version number (1 or more), or 0 for the newest")
	}
	t, err := s.GetTemplate(ctx, scope, ref, project)
	if err != nil {
		return nil, 0, err
	}
	vs, err := s.st.ListTemplateVersions(ctx, t.ID, before, limit+1)
	if err != nil {
		return nil, 0, fmt.Errorf("list versions of template %s: %w", t.ID, err)
	}
	next := 0
	if len(vs) > limit {
		vs = vs[:limit]
		next = vs[limit-1].Version
	}
	return vs, next, nil
}

// GetTemplateVersion returns one version of a template.
func (s *Templates) GetTemplateVersion(ctx context.Context, scope Scope, ref, project string, version int) (store.TemplateVersion, error) {
	t, err := s.GetTemplate(ctx, scope, ref, project)
	if err != nil {
		return store.TemplateVersion{}, err
	}
	if version < 1 {
		return store.TemplateVersion{}, invalid("version must be 1 or more")
	}
	v, err := s.st.GetTemplateVersion(ctx, t.ID, version)
	if errors.Is(err, store.ErrNotFound) && version == t.Version {
		// A manager from before versions made this template: its config
		// is its one version.
		return store.TemplateVersion{TemplateID: t.ID, Version: t.Version, Config: t.Config, Owner: t.Owner, CreatedAt: t.CreatedAt}, nil
	}
	if errors.Is(err, store.ErrNotFound) {
		return v, notFound("template version", fmt.Sprintf("%s@%d", t.Name, version)).
			suggest(fmt.Sprintf("template %s has versions 1 to %d: nexus template versions %s", t.Name, t.Version, t.Name))
	}
	if err != nil {
		return v, fmt.Errorf("get version %d of template %s: %w", version, t.ID, err)
	}
	return v, nil
}

// DiffTemplate compares two versions of a template field by field.
func (s *Templates) DiffTemplate(ctx context.Context, scope Scope, ref, project string, from, to int) (apitypes.TemplateDiff, error) {
	a, err := s.GetTemplateVersion(ctx, scope, ref, project, from)
	if err != nil {
		return apitypes.TemplateDiff{}, err
	}
	b, err := s.GetTemplateVersion(ctx, scope, ref, project, to)
	if err != nil {
		return apitypes.TemplateDiff{}, err
	}
	changes, err := diffConfigs(TemplateVersionView(a).Config, TemplateVersionView(b).Config)
	if err != nil {
		return apitypes.TemplateDiff{}, err
	}
	return apitypes.TemplateDiff{TemplateID: a.TemplateID, From: from, To: to, Changes: changes}, nil
}

// diffConfigs lists the top-level fields of two configs that differ, by
// name. Both are re-encoded from the typed config, so equal values compare
// equal byte for byte.
func diffConfigs(a, b apitypes.TemplateConfig) ([]apitypes.TemplateChange, error) {
	fields := func(c apitypes.TemplateConfig) (map[string]json.RawMessage, error) {
		raw, err := json.Marshal(c)
		if err != nil {
			return nil, fmt.Errorf("encode template config: %w", err)
		}
		m := map[string]json.RawMessage{}
		return m, json.Unmarshal(raw, &m)
	}
	am, err := fields(a)
	if err != nil {
		return nil, err
	}
	bm, err := fields(b)
	if err != nil {
		return nil, err
	}
	keys := map[string]bool{}
	for k := range am {
		keys[k] = true
	}
	for k := range bm {
		keys[k] = true
	}
	out := []apitypes.TemplateChange{}
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		if !bytes.Equal(am[k], bm[k]) {
			out = append(out, apitypes.TemplateChange{Field: k, From: am[k], To: bm[k]})
		}
	}
	return out, nil
}
