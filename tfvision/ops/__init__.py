"""Pure tensor functions (no Keras state): box formats, anchors, NMS, ROI ops, unpooling."""
