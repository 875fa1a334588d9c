package client

import (
	"context"
	"io"
	"net/http"

	"flotilla.dev/api"
)

// Backup asks the server for a backup of its whole state and returns the stream of the
// backup file; the caller closes it. Only a whole file ends with its checksum: check it.
func (c *Client) Backup(ctx context.Context) (io.ReadCloser, error) {
	resp, err := c.send(ctx, http.MethodGet, api.PathBackup, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}
