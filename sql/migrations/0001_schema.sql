-- Why: the whole data model of DESIGN.md in one step, so that every later feature
-- (commerce, checkout, media, realtime) writes into tables that already exist.
-- Money is integer minor units; currency is an ISO code on products and orders.

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE profiles (
    id         uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'seller', 'admin')),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    avatar_url text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Refresh tokens are stored hashed; a family is one login's chain of rotations.
CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   uuid NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

CREATE TABLE addresses (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    line1       text NOT NULL,
    line2       text,
    city        text NOT NULL,
    state       text,
    postal_code text NOT NULL,
    country     char(2) NOT NULL,
    phone       text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX addresses_user_idx ON addresses (user_id, created_at);

CREATE TABLE sellers (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    display_name text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 100),
    bio          text NOT NULL DEFAULT '',
    socials      jsonb NOT NULL DEFAULT '{}',
    kyc_status   text NOT NULL DEFAULT 'pending'
                 CHECK (kyc_status IN ('pending', 'verified', 'rejected')),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE categories (
    id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name      text NOT NULL,
    slug      text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
    parent_id uuid REFERENCES categories (id) ON DELETE RESTRICT
);
CREATE INDEX categories_parent_idx ON categories (parent_id);

CREATE TABLE products (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seller_id   uuid NOT NULL REFERENCES sellers (id) ON DELETE CASCADE,
    category_id uuid REFERENCES categories (id) ON DELETE SET NULL,
    title       text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '',
    price       bigint NOT NULL CHECK (price >= 0),
    currency    char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    images      jsonb NOT NULL DEFAULT '[]',
    status      text NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'active', 'archived')),
    search      tsvector GENERATED ALWAYS AS (
                    setweight(to_tsvector('english', coalesce(title, '')), 'A') ||
                    setweight(to_tsvector('english', coalesce(description, '')), 'B')
                ) STORED,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_search_idx ON products USING gin (search);
CREATE INDEX products_seller_idx ON products (seller_id, created_at DESC, id);
CREATE INDEX products_public_idx ON products (created_at DESC, id) WHERE status = 'active';
CREATE INDEX products_category_idx ON products (category_id);

-- Stock is kept equal to the sum of the variant's inventory events and only ever
-- changes in the same transaction as one (see commerce/inventory.py).
CREATE TABLE product_variants (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    product_id     uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    seller_id      uuid NOT NULL REFERENCES sellers (id) ON DELETE CASCADE,
    sku            text NOT NULL CHECK (length(sku) BETWEEN 1 AND 64),
    color          text,
    size           text,
    stock          integer NOT NULL DEFAULT 0 CHECK (stock >= 0),
    price_override bigint CHECK (price_override >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (seller_id, sku)
);
CREATE INDEX product_variants_product_idx ON product_variants (product_id);

CREATE TABLE wishlist_items (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    product_id uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, product_id)
);

CREATE TABLE coupons (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code           text NOT NULL UNIQUE CHECK (code = upper(code) AND length(code) BETWEEN 3 AND 40),
    seller_id      uuid REFERENCES sellers (id) ON DELETE CASCADE,
    discount_type  text NOT NULL CHECK (discount_type IN ('amount', 'percent')),
    value          bigint NOT NULL CHECK (value > 0),
    currency       char(3),
    min_subtotal   bigint NOT NULL DEFAULT 0 CHECK (min_subtotal >= 0),
    starts_at      timestamptz,
    ends_at        timestamptz,
    usage_limit    integer CHECK (usage_limit > 0),
    per_user_limit integer CHECK (per_user_limit > 0),
    used_count     integer NOT NULL DEFAULT 0 CHECK (used_count >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (discount_type <> 'percent' OR value <= 100),
    CHECK (discount_type <> 'amount' OR currency IS NOT NULL),
    CHECK (usage_limit IS NULL OR used_count <= usage_limit),
    CHECK (ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at)
);

CREATE TABLE carts (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'converted', 'abandoned')),
    currency   char(3),
    coupon_id  uuid REFERENCES coupons (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX carts_one_active_per_user ON carts (user_id) WHERE status = 'active';

CREATE TABLE cart_items (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    cart_id      uuid NOT NULL REFERENCES carts (id) ON DELETE CASCADE,
    product_id   uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    variant_id   uuid NOT NULL REFERENCES product_variants (id) ON DELETE CASCADE,
    qty          integer NOT NULL CHECK (qty > 0),
    price_at_add bigint NOT NULL CHECK (price_at_add >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (cart_id, variant_id)
);

CREATE TABLE livestreams (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seller_id     uuid NOT NULL REFERENCES sellers (id) ON DELETE CASCADE,
    title         text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    description   text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'scheduled'
                  CHECK (status IN ('scheduled', 'live', 'paused', 'ended')),
    is_live       boolean GENERATED ALWAYS AS (status IN ('live', 'paused')) STORED,
    scheduled_at  timestamptz,
    started_at    timestamptz,
    ended_at      timestamptz,
    stream_key    text NOT NULL UNIQUE,
    room          text NOT NULL UNIQUE,
    thumbnail_url text,
    chat_settings jsonb NOT NULL DEFAULT '{}',
    peak_viewers  integer NOT NULL DEFAULT 0,
    total_viewers integer NOT NULL DEFAULT 0,
    watch_seconds bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX livestreams_status_idx ON livestreams (status, scheduled_at);
CREATE INDEX livestreams_seller_idx ON livestreams (seller_id, created_at DESC);

CREATE TABLE live_products (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    livestream_id  uuid NOT NULL REFERENCES livestreams (id) ON DELETE CASCADE,
    product_id     uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    position       integer NOT NULL DEFAULT 0,
    highlighted_at timestamptz,
    UNIQUE (livestream_id, product_id)
);

CREATE TABLE chat_messages (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    livestream_id uuid NOT NULL REFERENCES livestreams (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message       text NOT NULL CHECK (length(message) BETWEEN 1 AND 500),
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);
CREATE INDEX chat_messages_stream_idx ON chat_messages (livestream_id, created_at, id);

CREATE TABLE chat_sanctions (
    livestream_id uuid NOT NULL REFERENCES livestreams (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind          text NOT NULL CHECK (kind IN ('mute', 'ban')),
    until         timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (livestream_id, user_id, kind)
);

-- One payment per checkout; it may pay for several orders (one per seller).
CREATE TABLE payments (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider           text NOT NULL CHECK (provider IN ('stripe', 'offline')),
    provider_intent_id text UNIQUE,
    client_secret      text,
    amount             bigint NOT NULL CHECK (amount >= 0),
    currency           char(3) NOT NULL,
    status             text NOT NULL DEFAULT 'requires_payment'
                       CHECK (status IN ('requires_payment', 'succeeded', 'failed', 'canceled', 'refunded')),
    refunded_amount    bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    expires_at         timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    seller_id         uuid NOT NULL REFERENCES sellers (id) ON DELETE RESTRICT,
    payment_id        uuid REFERENCES payments (id) ON DELETE SET NULL,
    livestream_id     uuid REFERENCES livestreams (id) ON DELETE SET NULL,
    coupon_id         uuid REFERENCES coupons (id) ON DELETE SET NULL,
    shipping_address  jsonb NOT NULL DEFAULT '{}',
    subtotal          bigint NOT NULL CHECK (subtotal >= 0),
    discount          bigint NOT NULL DEFAULT 0 CHECK (discount >= 0),
    total             bigint NOT NULL CHECK (total >= 0),
    currency          char(3) NOT NULL,
    status            text NOT NULL DEFAULT 'created'
                      CHECK (status IN ('created', 'paid', 'shipped', 'delivered', 'canceled', 'refunded')),
    payment_intent_id text,
    refunded_amount   bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK (total = subtotal - discount)
);
CREATE INDEX orders_user_idx ON orders (user_id, created_at DESC, id);
CREATE INDEX orders_seller_idx ON orders (seller_id, created_at DESC, id);
CREATE INDEX orders_payment_idx ON orders (payment_id);
CREATE INDEX orders_livestream_idx ON orders (livestream_id);

CREATE TABLE order_items (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id   uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id uuid NOT NULL REFERENCES products (id) ON DELETE RESTRICT,
    variant_id uuid NOT NULL REFERENCES product_variants (id) ON DELETE RESTRICT,
    qty        integer NOT NULL CHECK (qty > 0),
    price      bigint NOT NULL CHECK (price >= 0)
);
CREATE INDEX order_items_order_idx ON order_items (order_id);

CREATE TABLE coupon_redemptions (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    coupon_id  uuid NOT NULL REFERENCES coupons (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    payment_id uuid REFERENCES payments (id) ON DELETE CASCADE,
    status     text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'redeemed', 'released')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX coupon_redemptions_coupon_user_idx ON coupon_redemptions (coupon_id, user_id);

-- Stock reserved by a checkout until payment succeeds (confirmed) or it is released.
CREATE TABLE stock_holds (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_id uuid NOT NULL REFERENCES payments (id) ON DELETE CASCADE,
    order_id   uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    variant_id uuid NOT NULL REFERENCES product_variants (id) ON DELETE RESTRICT,
    qty        integer NOT NULL CHECK (qty > 0),
    status     text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'confirmed', 'released')),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stock_holds_expiry_idx ON stock_holds (expires_at) WHERE status = 'held';
CREATE INDEX stock_holds_payment_idx ON stock_holds (payment_id);

-- Append-only: the application role may only INSERT and SELECT (see server/db.py),
-- and a trigger refuses changes from anyone else.
CREATE TABLE inventory_events (
    id         bigserial PRIMARY KEY,
    product_id uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    variant_id uuid NOT NULL REFERENCES product_variants (id) ON DELETE CASCADE,
    delta      integer NOT NULL CHECK (delta <> 0),
    reason     text NOT NULL CHECK (length(reason) BETWEEN 1 AND 200),
    order_id   uuid REFERENCES orders (id) ON DELETE SET NULL,
    hold_id    uuid REFERENCES stock_holds (id) ON DELETE SET NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inventory_events_variant_idx ON inventory_events (variant_id, id);

CREATE FUNCTION inventory_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'inventory_events is append-only';
END $$;
CREATE TRIGGER inventory_events_no_update BEFORE UPDATE ON inventory_events
    FOR EACH ROW EXECUTE FUNCTION inventory_events_append_only();
CREATE TRIGGER inventory_events_no_delete BEFORE DELETE ON inventory_events
    FOR EACH ROW EXECUTE FUNCTION inventory_events_append_only();

CREATE TABLE processed_webhook_events (
    id           text PRIMARY KEY,
    type         text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE idempotency_keys (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
    request_hash text NOT NULL,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
