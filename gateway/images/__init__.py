"""Pure image work with Pillow (sniffing, limits, buckets, masks, stitching) and safe fetching."""
