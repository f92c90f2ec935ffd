-- Why: the realtime hub asks "which live rooms show this variant's product?" on every
-- stock change (live_products by product_id), and loads recent chat without deleted
-- messages; both need an index that 0001 does not have.
CREATE INDEX live_products_product_idx ON live_products (product_id);
CREATE INDEX chat_messages_visible_idx ON chat_messages (livestream_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
