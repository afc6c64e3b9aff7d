package api

import (
	"context"
	"net/http"

	"github.com/nexus-microvm/nexus/internal/manager"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// ImageService is the image registry as the image routes use it
// (manager.Images).
type ImageService interface {
	CreateImage(ctx context.Context, scope manager.Scope, id string, req apitypes.CreateImageRequest) (store.Image, error)
	GetImage(ctx context.Context, scope manager.Scope, ref, project string) (store.Image, error)
	ListImages(ctx context.Context, scope manager.Scope, kind, project string) ([]store.Image, error)
	DeleteImage(ctx context.Context, scope manager.Scope, ref, project string) (store.Image, error)
}

// imageRoutes registers the image registry's routes. Operators register
// and delete images of their project; shared images (project "*") need an
// admin, which the service checks since the project is in the body.
func (s *Server) imageRoutes() {

	register(s, "create-image", http.MethodPost, "/v1/images", "Register a kernel, initrd or rootfs file under FC_IMAGES_DIR as an image (checksummed on every ready host)", creates(op("image.create", "image")), s.createImage, http.StatusCreated)
	register(s, "list-images", http.MethodGet, "/v1/images", "List the images you can use (your project's and the shared ones)", viewer, s.listImages)
	register(s, "get-image", http.MethodGet, "/v1/images/{id}", "Get an image by id or name", viewer, s.getImage)
	register(s, "delete-image", http.MethodDelete, "/v1/images/{id}", "Remove an image from the registry (refused while VMs or templates use it; the file stays)", op("image.delete", "image"), s.deleteImage)
}

type createImageInput struct {
	Body apitypes.CreateImageRequest
}

type imageOutput struct {
	Location string `header:"Location" doc:"the new image: /v1/images/{id}"`
	Body     apitypes.ImageCreated
}

func (s *Server) createImage(ctx context.Context, in *createImageInput) (*imageOutput, error) {
	img, err := s.images.CreateImage(ctx, scope(ctx), newID(ctx), in.Body)
	if err != nil {
		return nil, err
	}
	v := manager.ImageView(img)
	return &imageOutput{Location: "/v1/images/" + v.ID, Body: apitypes.ImageCreated{Image: v, Item: v}}, nil
}

type listImagesInput struct {
	Kind    string `query:"kind" enum:"kernel,initrd,rootfs" required:"false"`
	Project string `query:"project" maxLength:"63" doc:"images a project can use (its own and the shared ones); \"*\": the shared ones only"`
}

type imageListOutput struct {
	Body apitypes.ImageList
}

func (s *Server) listImages(ctx context.Context, in *listImagesInput) (*imageListOutput, error) {
	imgs, err := s.images.ListImages(ctx, scope(ctx), in.Kind, in.Project)
	if err != nil {
		return nil, err
	}
	out := &imageListOutput{Body: apitypes.ImageList{Items: make([]apitypes.Image, 0, len(imgs))}}
	for _, img := range imgs {
		out.Body.Items = append(out.Body.Items, manager.ImageView(img))
	}
	return out, nil
}

type imageRefInput struct {
	ID      string `path:"id" maxLength:"64" doc:"image id or name"`
	Project string `query:"project" maxLength:"63" doc:"where to look a name up (default: the token's project); shared images are found too"`
}

type imageItemOutput struct {
	Body apitypes.ImageItem
}

func (s *Server) getImage(ctx context.Context, in *imageRefInput) (*imageItemOutput, error) {
	img, err := s.images.GetImage(ctx, scope(ctx), in.ID, in.Project)
	if err != nil {
		return nil, err
	}
	return &imageItemOutput{Body: apitypes.ImageItem{Item: manager.ImageView(img)}}, nil
}

func (s *Server) deleteImage(ctx context.Context, in *imageRefInput) (*okOutput, error) {
	_, err := s.images.DeleteImage(ctx, scope(ctx), in.ID, in.Project)
	if err != nil {
		return nil, err
	}
	return ok(), nil
}
