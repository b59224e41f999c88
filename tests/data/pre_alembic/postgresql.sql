-- The DDL Store.create_schema's create_all issued on PostgreSQL before Alembic (git HEAD 671abcf app/store.py),
-- compiled for the postgresql dialect: the starting point of tests/test_migrations.py.
CREATE TABLE datasets (
	id VARCHAR(80) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	owner VARCHAR(80), 
	status VARCHAR(16) NOT NULL, 
	created_at VARCHAR(40) NOT NULL, 
	info TEXT NOT NULL, 
	error TEXT, 
	PRIMARY KEY (id)
);
CREATE TABLE jobs (
	id VARCHAR(40) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	owner VARCHAR(80) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	created_at VARCHAR(40) NOT NULL, 
	started_at VARCHAR(40), 
	finished_at VARCHAR(40), 
	dataset VARCHAR(80), 
	device VARCHAR(16) NOT NULL, 
	params TEXT NOT NULL, 
	python_layer TEXT, 
	progress FLOAT NOT NULL, 
	iteration INTEGER NOT NULL, 
	max_iter INTEGER NOT NULL, 
	epoch FLOAT NOT NULL, 
	eta_seconds FLOAT, 
	metrics TEXT NOT NULL, 
	snapshots TEXT NOT NULL, 
	error TEXT, 
	abort_requested BOOLEAN NOT NULL, 
	resume_from INTEGER, 
	worker VARCHAR(200), 
	run INTEGER DEFAULT '0' NOT NULL, 
	heartbeat_at FLOAT, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_jobs_owner ON jobs (owner);
CREATE INDEX ix_jobs_status ON jobs (status);
CREATE INDEX ix_jobs_created_id ON jobs (created_at, id);
CREATE INDEX ix_jobs_owner_created_id ON jobs (owner, created_at, id);
CREATE INDEX ix_jobs_status_created_id ON jobs (status, created_at, id);
CREATE INDEX ix_jobs_dataset_created_id ON jobs (dataset, created_at, id);
CREATE TABLE users (
	name VARCHAR(80) NOT NULL, 
	password_hash VARCHAR(300) NOT NULL, 
	admin BOOLEAN NOT NULL, 
	created_at VARCHAR(40) NOT NULL, 
	PRIMARY KEY (name)
);
CREATE TABLE job_events (
	id SERIAL NOT NULL, 
	job_id VARCHAR(40) NOT NULL, 
	at VARCHAR(40) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	message TEXT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
CREATE INDEX ix_job_events_job_id ON job_events (job_id);
CREATE TABLE tokens (
	token_hash VARCHAR(64) NOT NULL, 
	"user" VARCHAR(80) NOT NULL, 
	created_at VARCHAR(40) NOT NULL, 
	PRIMARY KEY (token_hash), 
	FOREIGN KEY("user") REFERENCES users (name) ON DELETE CASCADE
);
CREATE INDEX ix_tokens_user ON tokens ("user");
