-- Why: after a crash (kill -9) a livestream stayed 'live' with no SFU room anywhere, so
-- nobody could watch it until the seller republished. On start a server reconciles the
-- livestreams it hosted; this column records which server (media node) hosts a show's
-- SFU room, so that with several nodes each one reconciles only its own.
ALTER TABLE livestreams ADD COLUMN media_node text;
CREATE INDEX livestreams_media_node_idx ON livestreams (media_node) WHERE status IN ('live', 'paused');
